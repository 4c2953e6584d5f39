-- A 256 MiB upload through seeded random server faults ends byte-identical.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local MiB = 1024 * 1024

describe("soak", function()
  it("256 MiB with random 503s, resets, partial persists and broken replies", function()
    local total_mib = tonumber(os.getenv("RW_SOAK_MIB") or "") or 256
    local srv = testbed.fakegcs.start { store = "memory", buckets = { "b" }, md5 = false }
    local fault_seed = H.seed % 1000000 + 1
    srv:faults { seed = fault_seed, p_503 = 0.05, p_reset = 0.05, p_partial = 0.08, p_broken = 0.05 }
    local block = H.random_bytes(MiB)
    local w = assert(rw.new(rw.context.background(), {
      sink = rw.gcs { bucket = "b", object = "soak", endpoint = srv:url() },
      max_cache_size = 32 * MiB, min_chunk_size = 2 * MiB, max_chunk_size = 4 * MiB,
      retry = { min_wait = 0.001, max_wait = 0.05, total_wait = 30, seed = fault_seed },
      stall_timeout = 10,
    }))
    -- each MiB: the random block with its index stamped in front, so a
    -- misplaced or duplicated MiB cannot look right
    local mibs = {}
    for i = 1, total_mib do mibs[i] = string.format("%016d", i) .. block:sub(17) end
    local t0 = H.now()
    local off = 0
    for i = 1, total_mib do
      local m = mibs[i]
      local pos = 1
      while pos <= #m do -- random write sizes
        local n = math.min(#m - pos + 1, math.random(1, math.floor(3 * MiB / 2)))
        assert(w:WriteAt(off, m:sub(pos, pos + n - 1)))
        off, pos = off + n, pos + n
      end
    end
    local obj, err = w:Complete()
    assert(obj, tostring(err) .. " (fault seed " .. fault_seed .. ")")
    local secs = H.now() - t0
    local st = w:stats()
    io.stderr:write(("[soak] %d MiB in %.1f s, %d retries, errors: "):format(total_mib, secs, st.retries))
    for code, n in pairs(st.errors) do io.stderr:write(code, "=", n, " ") end
    io.stderr:write("\n")
    assert.equal(total_mib * MiB, obj.size)
    assert.is_true(st.retries > 0, "the faults did happen")
    local got = srv:object("b", "soak")
    assert.equal(total_mib * MiB, #got)
    for _ = 1, 64 do
      local i = math.random(1, total_mib)
      assert.equal(mibs[i], got:sub((i - 1) * MiB + 1, i * MiB), "MiB #" .. i)
    end
    assert(got == table.concat(mibs), "content differs (fault seed " .. fault_seed .. ")")
    srv:stop()
  end)
end)
