-- bench/proxy: one upload of FILE through reliablewriter, directly to the fake
-- GCS or through a reliablewriter proxy.
--   lua5.4 bench/proxy/up.lua direct URL OBJECT FILE SIZE_MIB
--   lua5.4 bench/proxy/up.lua proxy ADDR OBJECT FILE SIZE_MIB CONNECTIONS SECRET_FILE [LAT,BW,WIN]
-- LAT,BW,WIN: each connection shaped by the test bed's delay line (seconds one
-- way, bytes/s, bytes in flight), a chaos relay in this process.
-- Prints: seconds bytes MiB/s cpu_seconds (this process, every thread: os.clock)
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local now = require("reliablewriter.core").util.monotime
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

local c0, t0 = os.clock(), now()
local w = assert(rw.new(rw.context.background(), opts))
assert(w:write_file(0, path, 0, size))
local obj = assert(w:Complete())
local dt, cpu = now() - t0, os.clock() - c0
w:close()
if relay then relay:stop() end
assert(tonumber(obj.size) == size, "the object's size differs from the bytes written")
print(("%.3f %d %.1f %.3f"):format(dt, size, size / MiB / dt, cpu))
