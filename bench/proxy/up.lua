-- bench/proxy: one upload of FILE through reliablewriter, directly to the fake
-- GCS or through a reliablewriter proxy.
--   lua5.4 bench/proxy/up.lua direct URL OBJECT FILE SIZE_MIB
--   lua5.4 bench/proxy/up.lua proxy ADDR OBJECT FILE SIZE_MIB CONNECTIONS SECRET_FILE [LAT,BW,WIN]
-- LAT,BW,WIN: each connection shaped by the test bed's delay line (seconds one
-- way, bytes/s, bytes in flight), a chaos relay in this process.
-- Prints: seconds bytes MiB/s
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local MiB = 1024 * 1024
local mode, target, object, path, size = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5]) * MiB

local opts = { max_cache_size = 64 * MiB, min_chunk_size = 4 * MiB, max_chunk_size = 4 * MiB, checksum = "crc32c" }
local relay
if mode == "direct" then
  opts.sink = rw.gcs { bucket = "b", object = object, endpoint = target }
  opts.max_chunk_size, opts.min_chunk_size = 8 * MiB, 8 * MiB
else
  local f = assert(io.open(arg[7], "rb"))
  local secret = f:read("a")
  f:close()
  local addr = target
  if arg[8] then
    local lat, bw, win = arg[8]:match("^([%d.]+),(%d+),(%d+)$")
    local profile = testbed.faults.profile { latency = tonumber(lat), bandwidth = tonumber(bw), window = tonumber(win) }
    relay = assert(testbed.faults.proxy { upstream = target, profile = profile })
    addr = relay:addr()
  end
  opts.sink = rw.proxy_sink { addr = addr, connections = tonumber(arg[6]), secret = secret, bucket = "b", object = object }
end

local t0 = rw.core and rw.core.util.monotime() or require("reliablewriter.core").util.monotime()
local now = require("reliablewriter.core").util.monotime
t0 = now()
local w = assert(rw.new(rw.context.background(), opts))
assert(w:write_file(0, path, 0, size))
assert(w:Complete())
local dt = now() - t0
w:close()
if relay then relay:stop() end
print(("%.3f %d %.1f"):format(dt, size, size / MiB / dt))
