-- The demo: upload a stream to an in-process fake GCS while the network
-- misbehaves, and check that not one byte is lost.
--   make demo            (or: lua5.4 examples/demo.lua [MiB] [seed])
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local MiB = 1024 * 1024

local size_mib = tonumber(arg[1]) or 64
local seed = tonumber(arg[2]) or os.time()
math.randomseed(seed)
print(("reliablewriter %s demo: %d MiB, seed %d"):format(rw.version, size_mib, seed))

-- 1. A fake GCS in this process, with seeded random faults: 503s, resets,
--    partial persists and broken replies on upload requests.
local srv <close> = testbed.fakegcs.start { store = "memory", buckets = { "demo" } }
srv:faults { seed = seed, p_503 = 0.08, p_reset = 0.05, p_partial = 0.08, p_broken = 0.05 }
print("fake GCS at " .. srv:url() .. " (HTTP faults on)")
-- and connection faults on our side: a reset every ~8 MiB, 5 ms of latency
local net = testbed.faults.profile { seed = seed, reset_per_mib = 1 / 8, latency = 0.005 }

-- 2. A writer: 16 MiB of cache, 2 MiB chunks, CRC32C and MD5.
local ctx = rw.context.background():with_timeout(300)
local last = 0
local w <close> = assert(rw.new(ctx, {
  sink = rw.gcs { bucket = "demo", object = "stream.bin", endpoint = srv:url(),
                  metadata = { contentType = "application/octet-stream" }, if_generation_match = 0,
                  faults = net },
  max_cache_size = 16 * MiB, min_chunk_size = 2 * MiB, max_chunk_size = 2 * MiB,
  retry = { min_wait = 0.01, max_wait = 0.5, total_wait = 60 },
  checksum = "both",
  on_progress = function(s)
    if s.persisted - last >= 16 * MiB then
      last = s.persisted
      print(("  persisted %4d MiB, cache %5.1f MiB, retries %d")
        :format(s.persisted // MiB, s.in_cache / MiB, s.retries))
    end
  end,
}))

-- 3. The stream: random 1 MiB blocks, written as they come (WriteAt keeps a
--    reference to each string; nothing is copied).
local blocks, t0 = {}, rw.util.monotime()
for i = 1, size_mib do
  local t = {}
  for j = 1, 1024 do t[j] = string.pack("<I8", math.random(0, 0x7fffffff) * 7919 + i * 1024 + j):rep(128) end
  blocks[i] = table.concat(t)
  assert(w:WriteAt((i - 1) * MiB, blocks[i]))
end
local obj = assert(w:Complete())
local secs = rw.util.monotime() - t0

-- 4. Check: the server's bytes are ours.
local stored, meta = srv:object("demo", "stream.bin")
local want = table.concat(blocks)
local st = w:stats()
print(("uploaded %d bytes in %.2f s (%.0f MiB/s) with %d retries; errors seen:")
  :format(obj.size, secs, obj.size / MiB / secs, st.retries))
for code, n in pairs(st.errors) do print(("  %-24s %d"):format(code, n)) end
local ns = net:stats()
print(("connection faults injected: %d resets over %d connections"):format(ns.resets, ns.connections))
print(("crc32c %s, md5 %s, generation %s"):format(obj.crc32c, obj.md5Hash, obj.generation))
assert(stored == want, "the stored object differs from what was written")
assert(meta.crc32c == obj.crc32c)
print("OK: the object on the server is byte-identical to the stream")
