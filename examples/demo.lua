-- The demo: `rwup cp` a file into an in-process fake GCS while the network
-- and the server misbehave, then check that not one byte was lost.
--   make demo            (or: lua5.4 examples/demo.lua [MiB] [seed])
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local cli = require "reliablewriter.cli"
local MiB = 1024 * 1024

local size_mib = tonumber(arg[1]) or 256
local seed = tonumber(arg[2]) or os.time()
print(("reliablewriter %s demo: rwup cp of %d MiB of random data, fault seed %d"):format(rw.version, size_mib, seed))

-- 1. A fake GCS in this process, with seeded faults on upload requests: 503s,
--    resets, partial persists and broken replies.
local srv <close> = testbed.fakegcs.start { store = "memory", buckets = { "demo" } }
srv:faults { seed = seed, p_503 = 0.06, p_reset = 0.03, p_partial = 0.06, p_broken = 0.03 }
-- and connection faults between us and it: a reset every ~48 MiB, and a
-- stall (the connection goes silent) every ~100 MiB, which the stall clock
-- (2 s here) must notice.
local net = testbed.faults.profile { seed = seed, reset_per_mib = 1 / 48, stall_per_mib = 1 / 100,
                                     stall_for = "forever", latency = 0.001 }
print("fake GCS at " .. srv:url() .. ": HTTP faults (503, reset, partial, broken reply) and")
print("connection faults (resets, a silent connection) on")

-- 2. The file: random bytes (from the kernel), in a temporary folder.
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))
local path = dir .. "/demo.bin"
do
  local rnd, out = assert(io.open("/dev/urandom", "rb")), assert(io.open(path, "wb"))
  for _ = 1, size_mib do out:write(rnd:read(MiB)) end
  rnd:close()
  out:close()
end

-- 3. rwup, the CLI, in this process (the same code as bin/rwup), with the live
--    progress line when this is a terminal.
local report = {}
local args = { "cp", "--chunk", "8M", "--cache", "64M", "--checksum", "both", "--stall-timeout", "2",
               "--state", dir .. "/state.json", path, "gs://demo/demo.bin" }
local code = cli.main(args, { sink_options = { endpoint = srv:url(), faults = net }, report = report })

-- 4. What it survived, and the check: the server's bytes are the file's.
local f = assert(io.open(path, "rb"))
local want = f:read("a")
f:close()
os.remove(path)
os.remove(dir)
local stored, meta = srv:object("demo", "demo.bin")
local st, ns = report.stats or {}, net:stats()
local http = { ["503"] = 0, other = 0 }
for _, r in ipairs(srv:requests()) do
  if r.status == 503 then http["503"] = http["503"] + 1 end
end
print()
print("| what | count |")
print("|---|---|")
print(("| 503 answers from the server | %d |"):format(http["503"]))
print(("| connection resets injected | %d |"):format(ns.resets))
print(("| connections gone silent (stalls) | %d |"):format(ns.stalls))
print(("| retries by the writer | %d |"):format(st.retries or 0))
for c, n in pairs(st.errors or {}) do print(("| errors seen: %s | %d |"):format(c, n)) end
print(("| bytes | %d |"):format(#want))
print(("| seconds | %.1f |"):format(report.seconds or 0))
print(("| MiB/s | %.1f |"):format(#want / MiB / math.max(report.seconds or 1, 1e-3)))
print()
assert(code == 0, "rwup failed with exit code " .. tostring(code) .. ": " .. tostring(report.error))
assert(stored == want, "the stored object differs from the file")
assert(meta.crc32c == report.object.crc32c and meta.md5Hash == report.object.md5Hash)
print(("OK: the object on the server is byte-identical to the file (crc32c %s, md5 %s)")
  :format(meta.crc32c, meta.md5Hash))
