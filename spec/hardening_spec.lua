-- Issue 8, the writer's side: each test shows one hardening item and fails on
-- the writer before it (persisted rewrites, ambiguous finalization, the retry
-- policy, out-of-window writes, the memory budget, finalizers that must not
-- wait on the network, out of descriptors).
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local KiB, MiB = 1024, 1024 * 1024

local start_server, retry_test, retry_test_done = H.start_server, H.retry_test, H.retry_test_done
local session_status, fast_retry, gcs_opts, gcs_writer = H.session_status, H.fast_retry, H.gcs_opts, H.gcs_writer
local eventually, session_uri, assert_same_bytes, lit = H.eventually, H.session_uri, H.assert_same_bytes, H.lit

local function gone(uri)
  local s = session_status(uri)
  return s == 404 or s == 499 or s == 410
end

-- The failure line the writer logged names the error's id.
local function assert_failure_logged(lines, err)
  assert.is_true(H.has_line(lines, "upload failed") and H.has_line(lines, lit(err.id)),
    "no failure line naming " .. err.id .. " in:\n" .. table.concat(lines, "\n"))
end

local function count_requests(srv, pred)
  local n = 0
  for _, r in ipairs(srv:requests()) do if pred(r) then n = n + 1 end end
  return n
end

describe("hardening (issue 8), writer side", function()
  local srv
  setup(function() srv = start_server() end)
  teardown(function() srv:stop() end)

  it("#4 a rewrite of persisted bytes is rw.overlap per whole 256 KiB block; same bytes are fine", function()
    io.stderr:write(("[#4] seed=%d\n"):format(H.seed))
    local data = H.random_bytes(MiB)
    local w = assert(gcs_writer(srv, "persisted-overlap", { max_cache_size = 2 * MiB, max_chunk_size = 256 * KiB }))
    assert(w:WriteAt(0, data))
    assert.is_true(eventually(function() return w:stats().persisted >= MiB end, 10), "never persisted 1 MiB")
    assert.equal(0, w:stats().in_cache) -- the bytes are gone from the cache: only the block CRCs remain
    -- different bytes over [0, 512 KiB): the first block is named
    local other = H.random_bytes(512 * KiB)
    local ok, err = w:WriteAt(0, other)
    assert.is_nil(ok)
    assert.equal("rw.overlap", err.code)
    assert.matches("[0, 262144)", err.message, 1, true)
    assert.matches("256 KiB", err.message, 1, true)
    -- the first block right, the second wrong: the second is named
    ok, err = w:WriteAt(0, data:sub(1, 256 * KiB) .. other:sub(256 * KiB + 1))
    assert.is_nil(ok)
    assert.equal("rw.overlap", err.code)
    assert.matches("[262144, 524288)", err.message, 1, true)
    -- the same bytes are accepted, also not block aligned
    assert.is_true(w:WriteAt(0, data:sub(1, 512 * KiB)))
    assert.is_true(w:WriteAt(300 * KiB, data:sub(300 * KiB + 1, MiB)))
    -- the documented granularity: a rewrite that covers no whole block is not
    -- compared (accepted, and it changes nothing on the server)
    assert.is_true(w:WriteAt(100, H.random_bytes(1000)))
    assert.is_true(w:WriteAt(128 * KiB, H.random_bytes(256 * KiB)))
    -- the upload goes on and completes with the first bytes
    local tail = H.random_bytes(100 * KiB + 7)
    assert(w:WriteAt(MiB, tail))
    local obj, cerr = w:Complete()
    assert(obj, tostring(cerr))
    assert_same_bytes(srv:object("b", "persisted-overlap"), data .. tail, "persisted-overlap")
  end)

  describe("#6 ambiguous finalization", function()
    it("a 200 whose body is cut to 10 bytes: the writer asks the session and takes the object", function()
      local id = retry_test(srv, { ["storage.objects.insert"] = { "return-broken-stream-final-chunk-after-10B" } })
      local data = H.random_bytes(700 * KiB + 3)
      local w = assert(gcs_writer(srv, "final-cut", { max_chunk_size = 256 * KiB }, { headers = { ["x-retry-test-id"] = id } }))
      srv:clear_requests()
      local lines, obj, err = H.capture_log(function()
        assert(w:WriteAt(0, data))
        return w:Complete()
      end)
      assert(obj, tostring(err))
      assert.equal(#data, obj.size)
      assert.is_false(H.has_line(lines, "upload failed"), table.concat(lines, "\n"))
      assert.is_true((retry_test_done(srv, id)), "the instruction was never used")
      assert_same_bytes(srv:object("b", "final-cut"), data, "final-cut")
      -- after the final PUT (cut), a status query found the object
      local reqs, final_at, query_after = srv:requests(), nil, false
      for i, r in ipairs(reqs) do
        local cr = r.content_range or ""
        if r.method == "PUT" and cr:match("^bytes %d+%-%d+/%d+$") then final_at = i end
        if final_at and i > final_at and r.method == "PUT" and cr:match("^bytes %*/") then query_after = true end
      end
      assert.is_truthy(final_at, "no final chunk was sent")
      assert.is_true(query_after, "no status query after the final chunk's unusable reply")
    end)

    it("return-broken-stream on the final chunk (persisted, then cut) ends with the object", function()
      -- the instruction must reach the final PUT, not the initiating POST: a
      -- first writer opens the session, a resumed one meets the instructions
      -- (its first status query takes the first, the final chunk the second)
      local data = H.random_bytes(300 * KiB + 11)
      local w1 = assert(gcs_writer(srv, "final-broken", { max_chunk_size = 256 * KiB }))
      assert(w1:WriteAt(0, data:sub(1, 256 * KiB)))
      assert.is_true(eventually(function() return w1:stats().persisted >= 256 * KiB end, 5))
      local s = assert(w1:Suspend())
      local id = retry_test(srv, { ["storage.objects.insert"] = { "return-broken-stream", "return-broken-stream" } })
      local w = assert(rw.resume(rw.context.background(), s, gcs_opts(srv, "final-broken", { max_chunk_size = 256 * KiB },
        { headers = { ["x-retry-test-id"] = id } })))
      local lines, obj, err = H.capture_log(function()
        assert(w:WriteAt(256 * KiB, data:sub(256 * KiB + 1)))
        return w:Complete()
      end)
      assert(obj, tostring(err))
      assert.equal(#data, obj.size)
      assert.is_false(H.has_line(lines, "upload failed"), table.concat(lines, "\n"))
      assert.is_true((retry_test_done(srv, id)))
      assert_same_bytes(srv:object("b", "final-broken"), data, "final-broken")
    end)

    it("a lost final reply never fails with 'the server holds bytes [0, 0)'", function()
      -- the final reply is unusable, and so is the status query that follows
      local id = retry_test(srv, { ["storage.objects.insert"] = { "return-broken-stream-final-chunk-after-10B", "return-400" } })
      local data = H.random_bytes(100 * KiB)
      local w = assert(gcs_writer(srv, "final-lost", { max_chunk_size = 256 * KiB }, { headers = { ["x-retry-test-id"] = id } }))
      local lines, obj, err = H.capture_log(function()
        assert(w:WriteAt(0, data))
        return w:Complete()
      end)
      assert.is_nil(obj)
      assert_failure_logged(lines, err)
      assert.is_false(H.has_line(lines, "the server holds bytes %[0, 0%)"), table.concat(lines, "\n"))
      assert.is_true((retry_test_done(srv, id)))
      w:Abort()
    end)
  end)

  describe("#8 retry policy", function()
    it("501 is not retryable: an upload that meets it fails at once with http.501", function()
      local info = rw.errors.codes["http.501"] -- not listed is fine: then the status rule decides
      assert.is_true(info == nil or info.retryable == false)
      assert.is_true(rw.errors.codes["http.503"].retryable)
      assert.is_false(rw.errors.new { code = "http.501", message = "x" }.retryable)
      local id = retry_test(srv, { ["storage.objects.insert"] = { "return-501" } })
      local w = assert(gcs_writer(srv, "r501", {}, { headers = { ["x-retry-test-id"] = id } }))
      local t0 = H.now()
      local lines, obj, err = H.capture_log(function()
        assert(w:WriteAt(0, H.random_bytes(10 * KiB)))
        return w:Complete()
      end)
      assert.is_nil(obj)
      assert.equal("http.501", err.code)
      assert.is_false(err.retryable)
      assert.equal(0, w:stats().retries)
      assert.is_true(H.now() - t0 < 2)
      assert_failure_logged(lines, err)
      w:Abort()
    end)

    local function upload_503(name, retry, sink_opts)
      local id = retry_test(srv, { ["storage.objects.insert"] = { "return-503" } })
      sink_opts = sink_opts or {}
      sink_opts.headers = { ["x-retry-test-id"] = id }
      local data = H.random_bytes(300 * KiB + 5)
      local w = assert(gcs_writer(srv, name, { retry = retry, max_chunk_size = 256 * KiB }, sink_opts))
      local lines, obj, err = H.capture_log(function()
        assert(w:WriteAt(0, data))
        return w:Complete()
      end)
      assert.is_true((retry_test_done(srv, id)))
      return w, obj, err, lines, data
    end

    it("policy = conditional without a precondition returns a 503 as is, after one attempt", function()
      local w, obj, err, lines = upload_503("cond-none", fast_retry { policy = "conditional" })
      assert.is_nil(obj)
      assert.equal("http.503", err.code)
      assert.equal(0, w:stats().retries)
      assert_failure_logged(lines, err)
      w:Abort()
    end)

    it("policy = conditional retries with if_generation_match = 0", function()
      local w, obj, err, _, data = upload_503("cond-igm", fast_retry { policy = "conditional" }, { if_generation_match = 0 })
      assert(obj, tostring(err))
      assert.is_true(w:stats().retries >= 1)
      assert_same_bytes(srv:object("b", "cond-igm"), data, "cond-igm")
    end)

    it("policy = conditional retries with if_metageneration_match", function()
      local first = assert(gcs_writer(srv, "cond-imgm", {}))
      assert(first:WriteAt(0, "old"))
      local o1 = assert(first:Complete())
      local mg = tonumber(o1.json:match('"metageneration"%s*:%s*"?(%d+)'))
      assert.is_number(mg)
      local w, obj, err, _, data = upload_503("cond-imgm", fast_retry { policy = "conditional" }, { if_metageneration_match = mg })
      assert(obj, tostring(err))
      assert.is_true(w:stats().retries >= 1)
      assert_same_bytes(srv:object("b", "cond-imgm"), data, "cond-imgm")
    end)

    it("policy = always (the default) retries without a precondition", function()
      for _, policy in ipairs { "always", false } do
        local name = "always-" .. tostring(policy)
        local w, obj, err, _, data = upload_503(name, fast_retry { policy = policy or nil })
        assert(obj, tostring(err))
        assert.is_true(w:stats().retries >= 1)
        assert_same_bytes(srv:object("b", name), data, name)
      end
    end)

    it("an unknown policy raises naming the option and the choices", function()
      local msg = H.raised(rw.new, rw.context.background(), gcs_opts(srv, "p", { retry = { policy = "sometimes" } }))
      assert.matches("policy", msg, 1, true)
      assert.matches("conditional", msg, 1, true)
      assert.matches("sometimes", msg, 1, true)
    end)
  end)

  describe("#10 writes only the caller can make room for", function()
    it("a write beyond the reachable window is rw.out_of_window at once, naming the window and the gap", function()
      local w = assert(gcs_writer(srv, "oow", { max_cache_size = MiB, max_chunk_size = 256 * KiB }))
      local ctx = rw.context.background():with_timeout(3) -- the old writer waits here
      local t0 = H.now()
      local ok, err = w:WriteAt(8 * MiB, H.random_bytes(1000), ctx)
      local took = H.now() - t0
      assert.is_nil(ok)
      assert.equal("rw.out_of_window", err.code, tostring(err))
      assert.is_true(took < 0.5, "WriteAt took " .. took .. " s")
      assert.matches("[0, 1048576)", err.message, 1, true)   -- the window
      assert.matches("[0, 8388608)", err.message, 1, true)   -- the gap
      -- larger than the cache, with a gap below it
      local data = H.random_bytes(100 * KiB)
      assert(w:WriteAt(0, data))
      t0 = H.now()
      ok, err = w:WriteAt(512 * KiB, H.random_bytes(2 * MiB), ctx)
      took = H.now() - t0
      assert.is_nil(ok)
      assert.equal("rw.out_of_window", err.code, tostring(err))
      assert.is_true(took < 0.5, "WriteAt took " .. took .. " s")
      assert.matches("[102400, 524288)", err.message, 1, true)
      -- the writer is not harmed
      local obj = assert(w:Complete())
      assert.equal(#data, obj.size)
      assert_same_bytes(srv:object("b", "oow"), data, "oow")
    end)

    it("a write inside contiguous_end + max_cache_size waits for room and succeeds", function()
      local id = retry_test(srv, { ["storage.objects.insert"] = { "stall-for-1s-after-0K" } })
      local w = assert(gcs_writer(srv, "reachable", { max_cache_size = MiB, max_chunk_size = 256 * KiB },
        { headers = { ["x-retry-test-id"] = id } }))
      local data = H.random_bytes(2 * MiB)
      assert(w:WriteAt(0, data:sub(1, MiB)))
      local ctx = rw.context.background():with_timeout(20)
      local t0 = H.now()
      -- past the window and past a gap, but reachable: the prefix moves it
      assert(w:WriteAt(MiB + 256 * KiB, data:sub(MiB + 256 * KiB + 1, MiB + 768 * KiB), ctx))
      local took = H.now() - t0
      assert.is_true(took > 0.3, "the write did not wait (" .. took .. " s)")
      assert(w:WriteAt(MiB, data:sub(MiB + 1, MiB + 256 * KiB), ctx))
      assert(w:WriteAt(MiB + 768 * KiB, data:sub(MiB + 768 * KiB + 1), ctx))
      assert(w:Complete())
      assert.is_true((retry_test_done(srv, id)))
      assert_same_bytes(srv:object("b", "reachable"), data, "reachable")
    end)

    it("under a memory budget full of out-of-order bytes, the write that fills the gap is admitted", function()
      finally(function() rw.set_memory_budget(0) end)
      -- writers of earlier tests that the collector has not reached yet still hold bytes
      -- counted against a budget: let them go first, so this writer has the budget alone
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function() return rw.memory_budget().used == 0 end, 5), "budget still used")
      rw.set_memory_budget(512 * KiB)
      local data = H.random_bytes(MiB + 17)
      local w = assert(gcs_writer(srv, "budget-gap", { max_cache_size = 4 * MiB, max_chunk_size = 256 * KiB }))
      local ctx = rw.context.background():with_timeout(5)
      -- [256 KiB, 1 MiB): 768 KiB out of order = the writer's 256 KiB floor + the whole budget
      assert(w:WriteAt(256 * KiB, data:sub(256 * KiB + 1, MiB), ctx))
      assert.equal(512 * KiB, rw.memory_budget().used)
      local ok, err = w:WriteAt(0, data:sub(1, 256 * KiB), ctx)
      assert(ok, tostring(err))
      assert(w:WriteAt(MiB, data:sub(MiB + 1), ctx))
      local obj, cerr = w:Complete(ctx)
      assert(obj, tostring(cerr))
      assert_same_bytes(srv:object("b", "budget-gap"), data, "budget-gap")
      assert.equal(0, rw.memory_budget().used)
    end)
  end)

  describe("#12 finalizers never wait on the network", function()
    local threads0
    setup(function()
      collectgarbage()
      collectgarbage()
      eventually(function() return rw.util.pool_threads() == 0 end, 5)
      threads0 = testbed.probes.thread_count()
    end)

    -- A finalizer that waited on the network would wait for the held DELETE
    -- up to abort_timeout (0.5 s: the old code took 501 ms). One that does not
    -- takes about 1 ms, but it waits for the cancelled transfer to let go of
    -- the cache (another thread), and on this shared 2-core machine a
    -- collectgarbage() took 14.9 ms once (busted lua5.4 beside busted luajit):
    -- a 10 ms bound measured the scheduler, not the finalizer. Half of
    -- abort_timeout still tells the two apart.
    local ABORT_TIMEOUT = 0.5
    local NO_WAIT = ABORT_TIMEOUT / 2

    -- An unfinished writer with a session whose DELETE the server holds 2 s.
    local function doomed(name)
      local id = retry_test(srv, { ["storage.objects.delete"] = { "stall-for-2s-after-0K" } })
      local w = assert(gcs_writer(srv, name, { max_chunk_size = 256 * KiB, abort_timeout = ABORT_TIMEOUT },
        { headers = { ["x-retry-test-id"] = id } }))
      assert(w:WriteAt(0, H.random_bytes(300 * KiB)))
      local uri = session_uri(w)
      assert.is_true(eventually(function() return w:stats().persisted >= 256 * KiB end, 5))
      return w, uri, id
    end

    -- The held DELETE outlives abort_timeout: the pool logs a warning, which
    -- is captured and asserted.
    local function delete_gave_up(lines_fn)
      local lines = {}
      eventually(function()
        for _, l in ipairs(lines_fn()) do lines[#lines + 1] = l end
        return H.has_line(lines, "deleting the session failed")
      end, 3)
      return lines
    end

    it("collectgarbage() of an unfinished writer does not wait for the DELETE; the session is deleted after", function()
      local rest, seen = H.capture_log(function()
        local w, uri, id = doomed("gc-doomed")
        collectgarbage()
        w = nil -- luacheck: ignore
        local t0 = H.now()
        collectgarbage()
        local took = H.now() - t0
        assert.is_true(took < NO_WAIT, ("collectgarbage() took %.1f ms"):format(took * 1000))
        assert.is_true(eventually(function() return (retry_test_done(srv, id)) end, 3), "the DELETE never reached the server")
        assert.is_true(eventually(function() return gone(uri) end, 5), "the session survived its writer")
        assert.is_nil(srv:object("b", "gc-doomed"))
        return delete_gave_up(rw.log.lines)
      end)
      assert.is_true(H.has_line(seen, "deleting the session failed"))
      assert.is_false(H.has_line(seen, "upload failed") or H.has_line(rest, "upload failed"))
    end)

    it("close() of an unfinished writer does not wait for the DELETE; the session is deleted after", function()
      local _, seen = H.capture_log(function()
        local w, uri, id = doomed("close-doomed")
        local t0 = H.now()
        w:close()
        local took = H.now() - t0
        assert.is_true(took < NO_WAIT, ("close() took %.1f ms"):format(took * 1000))
        assert.matches("closed writer", H.raised(w.WriteAt, w, 0, "x"))
        assert.is_true(eventually(function() return (retry_test_done(srv, id)) end, 3), "the DELETE never reached the server")
        assert.is_true(eventually(function() return gone(uri) end, 5), "the session survived close()")
        return delete_gave_up(rw.log.lines)
      end)
      assert.is_true(H.has_line(seen, "deleting the session failed"))
    end)

    it("an explicit Abort() still waits for the DELETE, up to abort_timeout", function()
      local lines = H.capture_log(function()
        local w, uri = doomed("abort-doomed")
        local t0 = H.now()
        assert.is_true(w:Abort())
        local took = H.now() - t0
        assert.is_true(took >= 0.45 and took < 0.5 + 0.3, ("Abort took %.3f s (abort_timeout 0.5)"):format(took))
        assert.equal("aborted", w:stats().state)
        assert.is_true(eventually(function() return gone(uri) end, 5))
        w:close()
      end)
      -- Abort itself waited for the DELETE's deadline: the warning came before it returned
      assert.is_true(H.has_line(lines, "deleting the session failed"), table.concat(lines, "\n"))
    end)

    it("the pool's threads go back to the starting count", function()
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function() return rw.util.pool_threads() == 0 end, 5),
        "pool threads left: " .. rw.util.pool_threads())
      assert.is_true(eventually(function() return testbed.probes.thread_count() <= threads0 end, 5),
        ("threads: %d, %d before"):format(testbed.probes.thread_count(), threads0))
    end)
  end)

  it("#14 out of descriptors: rw.new is nil, rw.resource_exhausted, whichever descriptor is missing", function()
    local out = H.run_lua([[
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
local ctx = rw.context.background()
local sink = rw.gcs { bucket = "b", object = "o", endpoint = srv:url() }
local files = {}
while true do
  local f = io.open("/dev/null")
  if not f then break end
  files[#files + 1] = f
end
print("filled=" .. #files)
-- free one descriptor at a time: each part that needs one fails in turn
for k = 0, 16 do
  if k > 0 then table.remove(files):close() end
  local ok, w, err = pcall(rw.new, ctx, { sink = sink })
  if not ok then print("raised: " .. tostring(w)); break end
  if w then print("writer made with " .. k .. " free"); w:Abort(); w:close(); break end
  print("code=" .. err.code .. " message=" .. err.message)
end
for _, f in ipairs(files) do f:close() end
srv:stop()
]], "ulimit -n 64; ")
    assert.is_true(tonumber(out:match("filled=(%d+)")) > 0, out)
    assert.matches("writer made with %d+ free", out)
    assert.is_nil(out:find("raised:", 1, true), out)
    assert.is_nil(out:find("net.refused", 1, true), out)
    assert.is_nil(out:find("reliablewriter error:", 1, true), out)
    local failures = 0
    for code in out:gmatch("code=(%S+)") do
      assert.equal("rw.resource_exhausted", code, out)
      failures = failures + 1
    end
    assert.is_true(failures >= 1, out)
    -- the writer's own descriptor (its eventfd) is one of them
    assert.matches("code=rw.resource_exhausted message=[^\n]*eventfd", out)
  end)
end)
