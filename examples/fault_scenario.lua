-- A scripted fault scenario with assertions: test your own upload code
-- against the in-process fake GCS (the test bed), with faults you choose.
--   lua5.4 examples/fault_scenario.lua [seed]
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local MiB = 1024 * 1024
local seed = tonumber(arg[1]) or os.time()
math.randomseed(seed)

local srv <close> = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
-- the server answers 503 to one request in ten and resets one in twenty ...
srv:faults { seed = seed, p_503 = 0.1, p_reset = 0.05 }
-- ... and the connection resets every ~2 MiB on the way. Where each
-- connection fails is drawn from the seed, and 8 MiB over a few connections
-- can miss every reset (4 seeds in 60 did), so take the first seed from
-- yours whose first four connections all reset before 256 KiB (the smallest
-- chunk): profile:plan(i) tells where connection i will fail.
local function early_resets(from)
  for s = from, from + 10000000 do
    local p = testbed.faults.profile { seed = s, reset_per_mib = 0.5 }
    local k = 0
    while k < 4 and p:plan(k).reset_at < 256 * 1024 do k = k + 1 end
    if k == 4 then return p, s end
  end
  error("no seed from " .. from .. " resets early")
end
local net, net_seed = early_resets(seed * 1000003) -- each seed a region of its own

local data = {}
for i = 1, 8 do data[i] = string.pack("<I8", math.random(0, 2^53)):rep(MiB // 8) end
data = table.concat(data)

local w <close> = assert(rw.new(rw.context.background():with_timeout(120), {
  sink = rw.gcs { bucket = "b", object = "scenario", endpoint = srv:url(), faults = net },
  min_chunk_size = 256 * 1024, max_chunk_size = 1 * MiB, max_cache_size = 4 * MiB,
  retry = { min_wait = 0.01, max_wait = 0.2, total_wait = 30 },
}))
for off = 0, #data - 1, MiB do assert(w:WriteAt(off, data:sub(off + 1, off + MiB))) end
local obj = assert(w:Complete())

-- the assertions: the faults happened, the writer retried, nothing was lost
local st = w:stats()
assert(st.retries > 0, "no retry: the faults did not fire (seed " .. seed .. ")")
assert(net:stats().resets > 0, "no connection reset (seed " .. seed .. ")")
assert(srv:object("b", "scenario") == data, "the stored bytes differ (seed " .. seed .. ")")
print(("ok: %d bytes stored intact through %d retries (%d connection resets), seed %d (relay %d), crc32c %s")
  :format(#data, st.retries, net:stats().resets, seed, net_seed, obj.crc32c))
