-- rw.resume asks the server what it holds before sending (issue 8, item 5):
-- a server ahead of the saved state, a finalized session, a server behind
-- the state, sessions that do not exist yet, bad states and dead sessions.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local KiB, MiB = 1024, 1024 * 1024

local function fast_retry(extra)
  local r = { min_wait = 0.005, max_wait = 0.05, total_wait = 5, seed = H.seed % 100000 + 1 }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function sink_for(srv, name)
  return rw.gcs { bucket = "b", object = name, endpoint = srv:url() }
end

local function new_writer(srv, name, opts)
  local o = { sink = sink_for(srv, name), retry = fast_retry(), stall_timeout = 5,
              min_chunk_size = 256 * KiB, max_chunk_size = 256 * KiB, max_cache_size = 4 * MiB }
  for k, v in pairs(opts or {}) do o[k] = v end
  return rw.new(rw.context.background(), o)
end

local function resume(srv, name, state, opts)
  local o = { sink = sink_for(srv, name), retry = fast_retry(), stall_timeout = 5,
              min_chunk_size = 256 * KiB, max_chunk_size = 256 * KiB, max_cache_size = 4 * MiB }
  for k, v in pairs(opts or {}) do o[k] = v end
  return rw.resume(rw.context.background(), state, o)
end

-- Waits (bounded) until the writer's persisted size reaches n.
local function wait_persisted(w, n, secs)
  local deadline = H.now() + (secs or 5)
  while w:stats().persisted < n and H.now() < deadline do
    w:poll()
    rw.util.sleep(0.005)
  end
  assert.equal(n, w:stats().persisted, "persisted never reached " .. n .. " (seed " .. H.seed .. ")")
end

-- Writes data[from+1 ..] at offset from, in random pieces, in order.
local function write_from(w, data, from, max_piece, ctx)
  local off = from
  while off < #data do
    local n = math.min(#data - off, math.random(1, max_piece or 200 * KiB))
    local ok, err = w:WriteAt(off, data:sub(off + 1, off + n), ctx)
    if not ok then return nil, err end
    off = off + n
  end
  return true
end

local function assert_same_bytes(got, want, what)
  assert(got, what .. ": no object on the server (seed " .. H.seed .. ")")
  assert.equal(#want, #got, what .. ": size (seed " .. H.seed .. ")")
  for _ = 1, 64 do
    local i = math.random(1, math.max(1, #want))
    assert.equal(want:byte(i), got:byte(i), ("%s: byte at offset %d (seed %d)"):format(what, i - 1, H.seed))
  end
  assert(got == want, what .. ": content differs (seed " .. H.seed .. ")")
end

-- The requests for object name, in order: {method, first byte or "*", status}.
local function requests_for(srv, name)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if (r.path or ""):find("name=" .. name .. "&", 1, true) then
      local cr = r.content_range or ""
      local a = cr:match("^bytes (%d+)%-")
      out[#out + 1] = { method = r.method, from = a and tonumber(a), query = cr:match("^bytes %*/") ~= nil,
                        range = cr, status = r.status }
    end
  end
  return out
end

local function data_puts(reqs)
  local n = 0
  for _, r in ipairs(reqs) do if r.method == "PUT" and r.from then n = n + 1 end end
  return n
end

-- POST /retry_test with storage.objects.insert instructions; returns the id.
local function retry_test(srv, list)
  local q = {}
  for i, v in ipairs(list) do q[i] = '"' .. v .. '"' end
  local body = '{"instructions": {"storage.objects.insert": [' .. table.concat(q, ",") .. ']}}'
  local p = io.popen(("curl -s -X POST -H 'Content-Type: application/json' --data '%s' %s/retry_test"):format(body, srv:url()))
  local out = p:read("a")
  p:close()
  return assert(out:match('"id"%s*:%s*"([^"]+)"'), "retry_test gave no id: " .. out)
end

-- A complete object, with the state saved when `at` bytes were persisted.
local function finalized(srv, name, data, at)
  local w = assert(new_writer(srv, name))
  assert(w:WriteAt(0, data:sub(1, at)))
  wait_persisted(w, at)
  local state = assert(w:session())
  assert(write_from(w, data, at))
  local obj = assert(w:Complete())
  assert.equal(#data, obj.size)
  w:close()
  return state, obj
end

describe("rw.resume asks the server first", function()
  local srv
  setup(function() srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } } end)
  teardown(function() srv:stop() end)

  it("a server ahead of the saved state: bytes it holds are taken from the caller, not resent", function()
    local data = H.random_bytes(3 * MiB)
    local w = assert(new_writer(srv, "ahead"))
    assert.is_nil(w:session())
    assert(w:WriteAt(0, data:sub(1, 1 * MiB)))
    wait_persisted(w, 1 * MiB)
    local old = assert(w:session())
    assert.equal(1 * MiB, old.persisted)
    assert.is_string(old.crc32c)
    assert(w:WriteAt(1 * MiB, data:sub(1 * MiB + 1, 2 * MiB)))
    wait_persisted(w, 2 * MiB)
    local now = assert(w:Suspend())
    assert.equal(2 * MiB, now.persisted)
    assert.equal(old.uri, now.uri)
    w:close()

    srv:clear_requests()
    local w2 = assert(resume(srv, "ahead", old))
    assert(write_from(w2, data, old.persisted))
    local obj = assert(w2:Complete())
    assert.equal(#data, obj.size)
    assert_same_bytes(srv:object("b", "ahead"), data, "ahead")
    local st = w2:stats()
    assert.equal("done", st.state)
    assert.equal(#data, st.persisted)

    local reqs = requests_for(srv, "ahead")
    assert.is_true(#reqs >= 2, "requests: " .. #reqs)
    assert.is_true(reqs[1].method == "PUT" and reqs[1].query, "the first request after resume was not a status query: "
      .. reqs[1].method .. " " .. reqs[1].range)
    assert.equal(308, reqs[1].status)
    local puts = 0
    for _, r in ipairs(reqs) do
      if r.method == "PUT" and r.from then
        puts = puts + 1
        assert.is_true(r.from >= 2 * MiB, "resent bytes the server held: " .. r.range)
      end
    end
    -- [2 MiB, 3 MiB) in 256 KiB chunks, the last one final
    assert.equal(4, puts)
  end)

  it("a finalized session yields its object once the caller supplies the same bytes", function()
    local data = H.random_bytes(1 * MiB + 300 * KiB + math.random(0, 1000))
    local state, obj = finalized(srv, "final", data, 512 * KiB)
    local _, meta = srv:object("b", "final")
    srv:clear_requests()
    local w = assert(resume(srv, "final", state))
    assert(write_from(w, data, state.persisted, 100 * KiB))
    local got = assert(w:Complete())
    assert.equal(#data, got.size)
    assert.equal(obj.generation, got.generation)
    assert.equal(obj.crc32c, got.crc32c)
    assert.equal("done", w:stats().state)
    local reqs = requests_for(srv, "final")
    assert.equal(1, #reqs, "requests after resume: " .. #reqs)
    assert.is_true(reqs[1].query)
    assert.equal(200, reqs[1].status)
    local _, meta2 = srv:object("b", "final")
    assert.equal(meta.generation, meta2.generation)
    assert_same_bytes(srv:object("b", "final"), data, "final")
  end)

  it("a finalized session with other bytes for the rest: gcs.checksum_mismatch, the object unchanged", function()
    local data = H.random_bytes(1 * MiB + 300 * KiB)
    local state = finalized(srv, "final-other", data, 768 * KiB)
    local _, meta = srv:object("b", "final-other")
    srv:clear_requests()
    local other = data:sub(1, state.persisted) .. H.random_bytes(#data - state.persisted)
    local w = assert(resume(srv, "final-other", state))
    assert(write_from(w, other, state.persisted))
    local lines, got, err = H.capture_log(function() return w:Complete() end)
    assert.is_nil(got)
    assert.equal("gcs.checksum_mismatch", err.code, tostring(err))
    assert.is_true(H.has_line(lines, "gcs.checksum_mismatch"), table.concat(lines, "\n"))
    assert.equal(0, data_puts(requests_for(srv, "final-other")))
    local _, meta2 = srv:object("b", "final-other")
    assert.equal(meta.generation, meta2.generation)
    assert_same_bytes(srv:object("b", "final-other"), data, "final-other")
    w:close()
  end)

  -- Resumes name's session from state; held: the status query is held 0.3 s
  -- (what the caller does lands before the server's answer), else the
  -- writer is given time to hear it first.
  local function resume_timed(name, state, held, opts)
    local o = { sink = rw.gcs { bucket = "b", object = name, endpoint = srv:url(),
      headers = held and { ["x-retry-test-id"] = retry_test(srv, { "stall-for-0.3s-after-0K" }) } or nil } }
    for k, v in pairs(opts or {}) do o[k] = v end
    local w = assert(resume(srv, name, state, o))
    if not held then rw.util.sleep(0.1) end
    return w
  end

  -- Writes data from `from`, then Complete(ctx, total): the first failure.
  -- Bounded: a writer that waits for what never comes ends with the context.
  local function write_complete(w, data, from, total)
    local ctx = rw.context.background():with_timeout(3)
    return H.capture_log(function()
      local ok, e = write_from(w, data, from, nil, ctx)
      if not ok then return nil, e end
      return w:Complete(ctx, total)
    end)
  end

  for _, held in ipairs { false, true } do
  local when = held and " (before the server's answer)" or " (after the server's answer)"
  it("a finalized session and a Complete of another size: gcs.session_conflict" .. when, function()
    local name = "final-size" .. (held and "-held" or "")
    local data = H.random_bytes(1 * MiB + 100 * KiB)
    local state = finalized(srv, name, data, 512 * KiB)
    local _, meta = srv:object("b", name)
    -- longer: one byte more than the object (the write past the end fails
    -- at once when the server has answered, else Complete does)
    local w = resume_timed(name, state, held)
    local lines, got, err = write_complete(w, data .. "x", state.persisted)
    assert.is_nil(got)
    assert.equal("gcs.session_conflict", err.code, tostring(err))
    assert.matches("finalized", err.message)
    assert.matches(tostring(#data), err.message)
    assert.is_true(H.has_line(lines, "gcs.session_conflict"), table.concat(lines, "\n"))
    w:close()
    -- shorter: Complete(ctx, total) with fewer bytes than the object
    local short = #data - 1000
    w = resume_timed(name, state, held)
    lines, got, err = write_complete(w, data:sub(1, short), state.persisted, short)
    assert.is_nil(got)
    assert.equal("gcs.session_conflict", err.code, tostring(err))
    assert.matches(tostring(#data), err.message)
    assert.is_true(H.has_line(lines, "gcs.session_conflict"), table.concat(lines, "\n"))
    w:close()
    local _, meta2 = srv:object("b", name)
    assert.equal(meta.generation, meta2.generation)
    assert_same_bytes(srv:object("b", name), data, name)
  end)

  it("a live session holding more than Complete's total: gcs.session_conflict, no hang" .. when, function()
    local name = "ahead-short" .. (held and "-held" or "")
    local data = H.random_bytes(2 * MiB)
    local w = assert(new_writer(srv, name))
    assert(w:WriteAt(0, data:sub(1, 512 * KiB)))
    wait_persisted(w, 512 * KiB)
    local old = assert(w:session())
    assert(w:WriteAt(512 * KiB, data:sub(512 * KiB + 1, 1 * MiB)))
    wait_persisted(w, 1 * MiB)
    assert(w:Suspend())
    w:close()
    local w2 = resume_timed(name, old, held)
    local total = 768 * KiB + 5
    local t0 = H.now()
    local lines, got, err = write_complete(w2, data:sub(1, total), old.persisted, total)
    assert.is_nil(got)
    assert.is_true(H.now() - t0 < 2, "took " .. (H.now() - t0) .. " s")
    assert.equal("gcs.session_conflict", err.code, tostring(err))
    assert.matches("holds " .. 1 * MiB .. " bytes", err.message)
    assert.is_true(H.has_line(lines, "gcs.session_conflict"), table.concat(lines, "\n"))
    w2:close()
    assert.is_nil(srv:object("b", name))
  end)
  end

  for _, held in ipairs { false, true } do
  it("a finalized session: writing far past its end fails at once, it never waits for room"
     .. (held and " (the writes arrive before the server's answer)" or ""), function()
    local name = held and "final-past-held" or "final-past"
    local data = H.random_bytes(600 * KiB)
    local state = finalized(srv, name, data, 512 * KiB)
    local sink_opts = {}
    if held then -- the status query is held 0.3 s: the cache fills before the writer knows
      sink_opts.headers = { ["x-retry-test-id"] = retry_test(srv, { "stall-for-0.3s-after-0K" }) }
    end
    local w = assert(resume(srv, name, state, { max_cache_size = 512 * KiB,
      sink = rw.gcs { bucket = "b", object = name, endpoint = srv:url(), headers = sink_opts.headers } }))
    local more = data .. H.random_bytes(2 * MiB)
    local t0 = H.now()
    local lines, ok, err = H.capture_log(function()
      local ctx = rw.context.background():with_timeout(3)
      local off = state.persisted
      while off < #more do
        local n = math.min(#more - off, 128 * KiB)
        local r, e = w:WriteAt(off, more:sub(off + 1, off + n), ctx)
        if not r then return nil, e end
        off = off + n
      end
      return w:Complete(ctx)
    end)
    assert.is_nil(ok)
    assert.is_true(H.now() - t0 < 2, "took " .. (H.now() - t0) .. " s")
    assert.equal("gcs.session_conflict", err.code, tostring(err))
    assert.is_true(H.has_line(lines, "gcs.session_conflict"), table.concat(lines, "\n"))
    w:close()
    assert_same_bytes(srv:object("b", name), data, name)
  end)
  end

  it("a server behind the state: gcs.session_conflict (the state is not this session's), nothing sent", function()
    local data = H.random_bytes(2 * MiB)
    local w = assert(new_writer(srv, "behind"))
    assert(w:WriteAt(0, data:sub(1, 512 * KiB)))
    wait_persisted(w, 512 * KiB)
    local state = assert(w:Suspend())
    w:close()
    srv:clear_requests()
    local forged = { uri = state.uri, persisted = 1 * MiB }
    local w2
    -- the writer asks the server as soon as it is made, and fails then: capture from there
    local lines, obj, err = H.capture_log(function()
      w2 = assert(resume(srv, "behind", forged))
      local ok, e = write_from(w2, data, forged.persisted)
      if not ok then return nil, e end
      return w2:Complete()
    end)
    assert.is_nil(obj)
    assert.equal("gcs.session_conflict", err.code, tostring(err))
    assert.matches("the state is not this session's", err.message)
    assert.matches(tostring(512 * KiB), err.message)
    assert.is_true(H.has_line(lines, "gcs.session_conflict"), table.concat(lines, "\n"))
    local reqs = requests_for(srv, "behind")
    assert.equal(0, data_puts(reqs), "data was sent to a session the state does not match")
    assert.is_true(#reqs >= 1 and reqs[1].query)
    w2:close()
    assert.is_nil(srv:object("b", "behind"))
  end)

  it("w:session() is nil until a session exists; Suspend() before that is nil, rw.no_session", function()
    local w = assert(new_writer(srv, "no-session"))
    assert.is_nil(w:session())
    assert(w:WriteAt(0, H.random_bytes(1000))) -- under one chunk: nothing is sent
    rw.util.sleep(0.05)
    assert.is_nil(w:session())
    local lines, state, err = H.capture_log(function() return w:Suspend() end)
    assert.is_nil(state)
    assert.equal("rw.no_session", err.code)
    assert.matches("no session", err.message)
    assert.is_false(H.has_line(lines, "reliablewriter error:"), table.concat(lines, "\n"))
    -- the writer is stopped
    assert.is_true(w:_stopped())
    local ok, e = w:WriteAt(1000, "more")
    assert.is_nil(ok)
    assert.equal("rw.closed", e.code)
    w:close()
    assert.equal(0, #requests_for(srv, "no-session"))
  end)

  it("Suspend() after a session: a state rw.resume accepts, and the upload finishes from it", function()
    local data = H.random_bytes(1 * MiB + math.random(1, 100 * KiB))
    local w = assert(new_writer(srv, "suspended"))
    assert(w:WriteAt(0, data:sub(1, 700 * KiB)))
    wait_persisted(w, 512 * KiB)
    local state = assert(w:Suspend())
    assert.equal(512 * KiB, state.persisted)
    assert.is_string(state.uri)
    assert.is_string(state.crc32c)
    assert.is_not_nil(w:session())
    w:close()
    local w2 = assert(resume(srv, "suspended", state))
    assert.equal(state.uri, assert(w2:session()).uri)
    assert(write_from(w2, data, state.persisted))
    assert.equal(#data, assert(w2:Complete()).size)
    assert_same_bytes(srv:object("b", "suspended"), data, "suspended")
  end)

  it("validates the state: each bad field raises naming it", function()
    local ctx = rw.context.background()
    local sink = sink_for(srv, "x")
    local u = srv:url() .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=x&upload_id=none"
    for _, p in ipairs { -1, 1.5, 0 / 0, "12", math.huge } do
      assert.matches("bad argument #2 to 'resume' %(session.persisted must be a whole number >= 0",
        H.raised(rw.resume, ctx, { uri = u, persisted = p }, { sink = sink }))
    end
    for _, c in ipairs { "AAAA", "AAAAAAA=", "AAAAAAAAAAAA", "AAAAAB==", 7 } do
      assert.matches("bad argument #2 to 'resume' %(session.crc32c must be the base64 CRC32C",
        H.raised(rw.resume, ctx, { uri = u, persisted = 0, crc32c = c }, { sink = sink }))
    end
    local tmp = os.tmpname()
    assert.matches("bad argument #3 to 'resume' %(option 'sink' must be an rw.gcs",
      H.raised(rw.resume, ctx, { uri = u, persisted = 0 }, { sink = rw.file { path = tmp } }))
    os.remove(tmp)
    assert.matches("bad argument #1 to 'resume' %(context expected",
      H.raised(rw.resume, nil, { uri = u, persisted = 0 }, { sink = sink }))
  end)

  it("a dead session (404): not retried, a clear error", function()
    local u = srv:url() .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=dead&upload_id=nosuch" .. H.seed
    srv:clear_requests()
    local w
    local t0 = H.now()
    -- the writer asks the server as soon as it is made, and fails then: capture from there
    local lines, obj, err = H.capture_log(function()
      w = assert(resume(srv, "dead", { uri = u, persisted = 0 },
        { retry = { min_wait = 0.2, max_wait = 0.5, total_wait = 10 } }))
      local ok, e = w:WriteAt(0, H.random_bytes(300 * KiB))
      if not ok then return nil, e end
      return w:Complete()
    end)
    assert.is_nil(obj)
    assert.is_true(H.now() - t0 < 0.5, "took " .. (H.now() - t0) .. " s: retried?")
    assert.equal("http.404", err.code, tostring(err))
    assert.is_false(err.retryable)
    assert.matches("No such upload session", tostring(err))
    assert.is_true(H.has_line(lines, "http.404"), table.concat(lines, "\n"))
    assert.equal(0, w:stats().retries)
    local reqs = requests_for(srv, "dead")
    assert.equal(1, #reqs, "requests: " .. #reqs)
    assert.is_true(reqs[1].query)
    assert.equal(404, reqs[1].status)
    H.capture_log(function() w:Abort() end) -- its DELETE may fail too: the session is gone
    w:close()
  end)
end)
