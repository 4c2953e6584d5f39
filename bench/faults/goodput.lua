-- Goodput of our writer under connection faults (issue 5 benchmark).
--   lua5.4 bench/faults/goodput.lua [MIB] [RESET_PER_MIB] [SEED] [PROXY_URL_UNUSED]
-- Uploads MIB MiB (8 MiB chunks) to an in-process fake GCS (memory store)
-- without faults, with the dialer's resets, and through the chaos proxy with
-- the same schedule; prints one row per run:
--   row|name|finished|seconds|bytes_ok|resets
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
package.cpath = (os.getenv("RW_CPATH") or "build/lua5.4/?.so") .. ";" .. package.cpath
local rw = require "reliablewriter"
local core = require "reliablewriter.core"
local MiB = 1024 * 1024
local n = tonumber(arg[1]) or 256
local rate = tonumber(arg[2]) or 1 / 16
local seed = tonumber(arg[3]) or 1

math.randomseed(seed)
local t = {}
for i = 1, MiB / 8 do t[i] = string.pack("<I8", math.random(0, 0x7fffffff) * 0x100000000 + math.random(0, 0x7fffffff)) end
local block = table.concat(t)
local function mib(i) return ("%08d"):format(i) .. block:sub(9) end

local function run(name, srv, endpoint, profile)
  local so = { bucket = "b", object = name, endpoint = endpoint, if_generation_match = 0, faults = profile }
  local w = assert(rw.new(rw.context.background(), {
    sink = rw.gcs(so), min_chunk_size = 256 * 1024, max_chunk_size = 8 * MiB,
    max_cache_size = 64 * MiB,
    retry = { min_wait = 0.01, max_wait = 0.5, total_wait = 120, seed = seed }, stall_timeout = 5 }))
  local t0 = core.util.monotime()
  local ok, err = true, nil
  for i = 0, n - 1 do
    ok, err = w:WriteAt(i * MiB, mib(i))
    if not ok then break end
  end
  if ok then ok, err = w:Complete() end
  local dt = core.util.monotime() - t0
  local good = false
  if ok then
    local got = srv:object("b", name)
    good = type(got) == "string" and #got == n * MiB
    for i = 0, n - 1 do
      if not good then break end
      good = got:sub(i * MiB + 1, (i + 1) * MiB) == mib(i)
    end
  else
    io.stderr:write(name .. ": " .. tostring(err) .. "\n")
    w:Abort()
  end
  return ok and true or false, dt, good
end

local srv = rw.fakegcs.start { store = "memory", buckets = { "b" } }
local ok, dt, good = run("clean", srv, srv:url(), nil)
print(("row|reliablewriter, no faults|%s|%.2f|%s|0"):format(ok, dt, good))
collectgarbage()
local p = rw.faults.profile { seed = seed, reset_per_mib = rate }
ok, dt, good = run("dialer", srv, srv:url(), p)
print(("row|reliablewriter, dialer|%s|%.2f|%s|%d"):format(ok, dt, good, p:stats().resets))
collectgarbage()
local pp = rw.faults.profile { seed = seed, reset_per_mib = rate }
local px = assert(rw.faults.proxy { upstream = srv:url(), profile = pp })
ok, dt, good = run("proxy", srv, px:url(), nil)
print(("row|reliablewriter, chaos proxy|%s|%.2f|%s|%d"):format(ok, dt, good, pp:stats().resets))
px:stop()
srv:stop()
