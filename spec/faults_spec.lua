-- Connection-level faults (issue 5): testbed.faults.profile, rw.gcs{faults=},
-- testbed.faults.proxy, and uploads that must survive them byte for byte.
-- The 256 MiB upload takes ~35 s (measured: 25 s of upload, ~110 resets, 7
-- stalls); it is tagged #slow (busted --exclude-tags=slow skips it) and a
-- 32 MiB variant of the same schedule runs too.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local core = require "reliablewriter.core"
local MiB = 1024 * 1024

-- Lua pattern that matches s literally.
local function lit(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

-- Asserts that the captured log (H.capture_log) holds the line the writer's
-- failure made: at error level, "upload failed", naming err's id and code.
local function assert_failure_logged(lines, err)
  assert.is_true(H.has_line(lines, "reliablewriter error: upload failed .* id=" .. lit(err.id) .. " code=" .. lit(err.code)),
    "no log line for " .. tostring(err) .. " among:\n" .. table.concat(lines, "\n"))
end

-- Writes with w, then Completes, with the log captured: lines, ok, err.
local function write_complete_captured(w, off, data)
  return H.capture_log(function()
    local ok, err = w:WriteAt(off, data)
    if ok then ok, err = w:Complete() end
    return ok, err
  end)
end

local function start_fake()
  return testbed.fakegcs.start { store = "memory", buckets = { "b" } }
end

-- A random 1 MiB block; MiB number i is the block with "%08d" of i first, so
-- every MiB is different and offsets can be told apart.
local block = H.random_bytes(MiB)
local function mib(i) return ("%08d"):format(i) .. block:sub(9) end

local function retry()
  return { min_wait = 0.01, max_wait = 0.5, total_wait = 60, seed = H.seed % 100000 + 1 }
end

local function writer(srv, name, sink_extra, opts)
  local so = { bucket = "b", object = name, endpoint = srv:url(), if_generation_match = 0 }
  for k, v in pairs(sink_extra or {}) do so[k] = v end
  local o = { sink = rw.gcs(so), min_chunk_size = 256 * 1024, max_chunk_size = 8 * MiB,
              retry = retry(), stall_timeout = 2 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(rw.new(rw.context.background(), o))
end

-- Writes n MiB (whole MiB pieces, in order), completes, returns seconds.
local function upload(w, n)
  local t0 = H.now()
  for i = 0, n - 1 do assert(w:WriteAt(i * MiB, mib(i))) end
  assert(w:Complete())
  return H.now() - t0
end

-- The object on the server is exactly MiB 0..n-1: every MiB, and random slices.
local function check_object(srv, name, n)
  local got = srv:object("b", name)
  assert.is_string(got)
  assert.are.equal(n * MiB, #got)
  for i = 0, n - 1 do
    if got:sub(i * MiB + 1, (i + 1) * MiB) ~= mib(i) then
      error(("MiB %d differs (seed %d)"):format(i, H.seed))
    end
  end
  for _ = 1, 64 do
    local off = math.random(0, n * MiB - 1)
    local len = math.min(math.random(1, 100000), n * MiB - off)
    local i = math.floor(off / MiB)
    local want = (mib(i) .. (i + 1 < n and mib(i + 1) or "")):sub(off - i * MiB + 1, off - i * MiB + len)
    if #want == len then assert.are.equal(want, got:sub(off + 1, off + len)) end
  end
end

-- A seed near H.seed whose first connection resets before `limit` bytes at
-- `rate` per MiB (so a test that counts resets cannot be unlucky).
local function seed_resetting(rate, limit)
  local s = H.seed
  while testbed.faults.profile({ seed = s, reset_per_mib = rate }):plan(0).reset_at >= limit do s = s + 1 end
  return s
end

-- A seed whose first connection resets before `limit` bytes and whose second
-- one stalls early, before it would reset: the upload then meets both a reset
-- and a stall for certain (the search is bounded).
local function seed_resetting_and_stalling(reset_rate, stall_rate, limit)
  for s = H.seed, H.seed + 100000 do
    local p = testbed.faults.profile { seed = s, reset_per_mib = reset_rate, stall_per_mib = stall_rate }
    local p0, p1 = p:plan(0), p:plan(1)
    if p0.reset_at < limit and p1.stall_at < 4 * MiB and p1.stall_at < p1.reset_at then return s end
  end
  error("no seed near " .. H.seed .. " resets and stalls early")
end

local function settle(cond, timeout)
  local t0 = H.now()
  while not cond() and H.now() - t0 < (timeout or 3) do
    collectgarbage(); collectgarbage()
    os.execute("sleep 0.05")
  end
  return cond()
end

describe("testbed.faults.profile", function()
  it("checks its options strictly, naming them", function()
    assert.truthy(H.raised(testbed.faults.profile, { seed = 1, resets = 1 }):find("resets", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { refuse = 2 }):find("refuse", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { reset_per_mib = -1 }):find("reset_per_mib", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { stall_for = "long" }):find("stall_for", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { bandwidth = 10 }):find("bandwidth", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { latency = 100 }):find("latency", 1, true))
    assert.truthy(H.raised(testbed.faults.profile, { max_connections = 0 }):find("max_connections", 1, true))
    local p = testbed.faults.profile { seed = 7, reset_per_mib = 0.05, stall_per_mib = 0.01, stall_for = "forever",
                                  latency = 0.02, bandwidth = 50 * MiB, refuse = 0.1, close_per_mib = 0.01,
                                  truncate_per_mib = 0.01 }
    assert.truthy(tostring(p):find("seed 7", 1, true))
    local st = p:stats()
    for _, k in ipairs { "connections", "refused", "resets", "closes", "stalls", "truncates", "active",
                         "bytes_up", "bytes_down" } do
      assert.are.equal(0, st[k], k)
    end
    assert.are.same({}, p:events())
    assert.is_not_nil(testbed.faults.profile())
  end)

  it("draws the same schedule from the same seed", function()
    local a = testbed.faults.profile { seed = H.seed, reset_per_mib = 0.25, stall_per_mib = 1 / 32, refuse = 0.2 }
    local b = testbed.faults.profile { seed = H.seed, reset_per_mib = 0.25, stall_per_mib = 1 / 32, refuse = 0.2 }
    local c = testbed.faults.profile { seed = H.seed + 1, reset_per_mib = 0.25, stall_per_mib = 1 / 32, refuse = 0.2 }
    local differ = 0
    for i = 0, 99 do
      assert.are.same(a:plan(i), b:plan(i))
      if a:plan(i).reset_at ~= c:plan(i).reset_at then differ = differ + 1 end
      assert.are.equal(math.huge, a:plan(i).close_at)
    end
    assert.truthy(differ > 95)
    assert.truthy(H.raised(a.plan, a, -1):find("index", 1, true))
  end)

  it("is accepted by rw.gcs{faults=} (a profile or its options)", function()
    local p = testbed.faults.profile { seed = 3 }
    local d = rw.gcs { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1", faults = p }
    assert.are.equal(p, d:faults())
    local d2 = rw.gcs { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1", faults = { seed = 9 } }
    assert.are.equal(9, d2:faults().seed)
    assert.truthy(H.raised(rw.gcs, { bucket = "b", object = "o", faults = 3 }):find("faults", 1, true))
    assert.truthy(H.raised(rw.gcs, { bucket = "b", object = "o", faults = { bogus = 1 } }):find("bogus", 1, true))
  end)
end)

-- A host name that cannot resolve without asking any DNS server: a label
-- longer than 63 bytes is refused by the resolver library itself, so the
-- test sends nothing past loopback (a plain "x.invalid" would query the
-- configured nameserver).
local UNRESOLVABLE = string.rep("u", 70) .. ".invalid"

describe("uploads through a fault-injecting dialer", function()
  local srv
  before_each(function() srv = start_fake() end)
  after_each(function() srv:stop(); collectgarbage() end)

  local function resets_and_stalls(n, must_stall)
    -- A reset every 4 MiB on average, a 3 s stall every 32 MiB, 8 MiB chunks.
    local seed = must_stall and seed_resetting_and_stalling(0.25, 1 / 32, 8 * MiB) or seed_resetting(0.25, 8 * MiB)
    local p = testbed.faults.profile { seed = seed, reset_per_mib = 0.25,
                                  stall_per_mib = 1 / 32, stall_for = 3 }
    local w = writer(srv, "big", { faults = p })
    local dt = upload(w, n)
    check_object(srv, "big", n)
    local st, ps = w:stats(), p:stats()
    io.stderr:write(("[faults] %d MiB: %.1f s, %d connections, %d resets, %d stalls, errors %s (seed %d)\n"):format(
      n, dt, ps.connections, ps.resets, ps.stalls,
      (function() local t = {} for k, v in pairs(st.errors) do t[#t + 1] = k .. "=" .. v end return table.concat(t, " ") end)(),
      H.seed))
    assert.truthy(ps.resets > 0)
    -- Every stall is ended by the writer (net.stall, the connection closed)
    -- within stall_timeout + 1 s, before the 3 s stall would run out.
    local stalls = 0
    for _, e in ipairs(p:events()) do
      if e.kind == "stall" then
        stalls = stalls + 1
        assert.are.equal("closed", e.ended)
        assert.truthy(e.held <= 2 + 1, ("stall held %.2f s"):format(e.held))
      end
    end
    assert.are.equal(ps.stalls, stalls)
    if must_stall then assert.truthy(stalls >= 1, "the schedule promised a stall (seed " .. seed .. ")") end
    if stalls > 0 then assert.truthy((st.errors["net.stall"] or 0) >= 1) end
    -- closed, not left to the collector: under LuaJIT a compiled trace may
    -- keep a dropped writer (and its connection) alive for a while
    w:close()
    w = nil
    assert.truthy(settle(function() return p:stats().active == 0 end),
      ("relay connections still open: %d (seed %d)"):format(p:stats().active, seed))
  end

  it("32 MiB with resets every 4 MiB and 3 s stalls: byte-identical; a stall is ended within stall_timeout + 1 s", function()
    resets_and_stalls(32, true)
  end)

  it("256 MiB with resets every 4 MiB and 3 s stalls: byte-identical #slow", function()
    resets_and_stalls(256)
  end)

  it("Abort while blackholed returns within 200 ms and leaves no thread or socket", function()
    -- A seed whose first connection (the POST, then reused for the PUT)
    -- stalls forever after 4 KiB..1 MiB, and whose next connections (the
    -- DELETE of Abort) do not stall in their first 64 KiB.
    local seed = H.seed
    local function fits(s)
      local p = testbed.faults.profile { seed = s, stall_per_mib = 4, stall_for = "forever" }
      local a = p:plan(0).stall_at
      return a > 4096 and a < MiB and p:plan(1).stall_at > 65536 and p:plan(2).stall_at > 65536
    end
    while not fits(seed) do seed = seed + 1 end
    collectgarbage(); collectgarbage()
    local fds0, threads0 = testbed.probes.fd_count(), testbed.probes.thread_count() - core.util.pool_threads()
    local p = testbed.faults.profile { seed = seed, stall_per_mib = 4, stall_for = "forever" }
    local w = writer(srv, "hole", { faults = p }, { stall_timeout = 60 })
    for i = 0, 3 do assert(w:WriteAt(i * MiB, mib(i))) end
    assert.truthy(settle(function() return p:stats().stalls == 1 end, 5))
    os.execute("sleep 0.2")
    local t0 = H.now()
    w:Abort()
    local dt = H.now() - t0
    io.stderr:write(("[faults] Abort while blackholed: %.0f ms\n"):format(dt * 1000))
    assert.truthy(dt < 0.2, ("Abort took %.3f s"):format(dt))
    w = nil
    assert.truthy(settle(function() return p:stats().active == 0 end))
    assert.truthy(settle(function() return testbed.probes.fd_count() <= fds0 end),
      ("fds %d, before %d"):format(testbed.probes.fd_count(), fds0))
    assert.truthy(settle(function()
      return testbed.probes.thread_count() - core.util.pool_threads() <= threads0
    end), ("threads %d (pool %d), before %d"):format(testbed.probes.thread_count(), core.util.pool_threads(), threads0))
    local ev = p:events()
    assert.are.equal("stall", ev[1].kind)
    assert.are.equal("closed", ev[1].ended)
  end)

  it("retries refused connections with backoff and completes", function()
    -- A seed whose first two connections are refused: the writer must meet
    -- refusals (the test cannot pass without any).
    local seed = H.seed
    local function fits(sd)
      local p = testbed.faults.profile { seed = sd, refuse = 0.4, reset_per_mib = 0.5 }
      return p:plan(0).refused and p:plan(1).refused and not p:plan(2).refused
    end
    while not fits(seed) do
      seed = seed + 1
      assert(seed < H.seed + 10000, "no seed refuses the first two connections")
    end
    local p = testbed.faults.profile { seed = seed, refuse = 0.4, reset_per_mib = 0.5 }
    local w = writer(srv, "refused", { faults = p })
    upload(w, 8)
    check_object(srv, "refused", 8)
    local st, ps = w:stats(), p:stats()
    local ev = p:events()
    assert.are.equal("refuse", ev[1].kind)
    assert.are.equal(0, ev[1].conn)
    assert.are.equal("refuse", ev[2].kind)
    assert.are.equal(1, ev[2].conn)
    assert.truthy(ps.refused >= 2, "refused " .. ps.refused)
    assert.truthy((st.errors["net.refused"] or 0) >= 2, "net.refused " .. tostring(st.errors["net.refused"]))
    assert.truthy(st.backoff_ms > 0)
    assert.truthy(ps.connections > ps.refused)
  end)

  it("refuses connections past max_connections while the others stay open", function()
    -- Writer a keeps its connection open between chunks; with a bound of 1,
    -- writer b's connections through the same profile are refused until a
    -- completes, and b then gives up on its (short) retry budget.
    local p = testbed.faults.profile { seed = H.seed, max_connections = 1 }
    local function w(name, total_wait)
      return assert(rw.new(rw.context.background(), {
        sink = rw.gcs { bucket = "b", object = name, endpoint = srv:url(), faults = p, if_generation_match = 0 },
        min_chunk_size = 256 * 1024, max_chunk_size = MiB, stall_timeout = 2,
        retry = { min_wait = 0.01, max_wait = 0.05, total_wait = total_wait, seed = 1 } }))
    end
    local a = w("a", 30)
    assert(a:WriteAt(0, mib(0) .. mib(1)))
    assert.truthy(settle(function() return p:stats().active == 1 end, 5))
    local b = w("b", 0.3)
    local lines, ok, err = write_complete_captured(b, 0, mib(2) .. mib(3))
    assert.is_nil(ok)
    assert_failure_logged(lines, err)
    local ps = p:stats()
    assert.truthy((b:stats().errors["net.refused"] or 0) >= 2, tostring(err))
    assert.truthy(ps.refused >= 2)
    assert.are.equal(1, ps.active)
    assert.are.equal(ps.connections, ps.refused + 1) -- only a's connection was let through
    assert.truthy(err.code == "rw.retry_budget_exhausted" or err.code == "net.refused", tostring(err))
    b:Abort()
    assert(a:Complete())
    check_object(srv, "a", 2)
    assert.is_nil(srv:object("b", "b"))
    a, b = nil, nil
    assert.truthy(settle(function() return p:stats().active == 0 end))
  end)

  it("retries DNS-style failures with backoff until the budget ends", function()
    local p = testbed.faults.profile { seed = H.seed, refuse = 0.5 }
    local w = assert(rw.new(rw.context.background(), {
      sink = rw.gcs { bucket = "b", object = "dns", endpoint = "http://" .. UNRESOLVABLE .. ":80", faults = p },
      retry = { min_wait = 0.01, max_wait = 0.05, total_wait = 0.3, seed = 1 }, stall_timeout = 2 }))
    local lines, ok, err = write_complete_captured(w, 0, mib(0))
    assert.is_nil(ok)
    assert_failure_logged(lines, err)
    local st = w:stats()
    assert.truthy((st.errors["net.dns"] or 0) >= 2, "net.dns retried")
    assert.truthy(st.backoff_ms > 0)
    assert.truthy(tostring(err):find(UNRESOLVABLE, 1, true) or err.code == "rw.retry_budget_exhausted",
      tostring(err))
    w:Abort()
  end)

  it("does not retry a non-retryable HTTP error even with faults on", function()
    local body = '{"instructions": {"storage.objects.insert": ["return-400"]}}'
    local pipe = io.popen(("curl -s -X POST -H 'Content-Type: application/json' --data '%s' %s/retry_test")
      :format(body, srv:url()))
    local id = pipe:read("*a"):match('"id"%s*:%s*"([^"]+)"')
    pipe:close()
    assert.is_string(id)
    local p = testbed.faults.profile { seed = H.seed, refuse = 0.3, latency = 0.001 }
    local w = writer(srv, "bad", { faults = p, headers = { ["x-retry-test-id"] = id } })
    local lines, ok, err = write_complete_captured(w, 0, mib(0))
    assert.is_nil(ok)
    assert.are.equal("http.400", err.code)
    assert_failure_logged(lines, err)
    assert.is_false(err.retryable)
    local posts = 0
    for _, r in ipairs(srv:requests()) do
      if r.method == "POST" and r.path:find("/upload/", 1, true) then posts = posts + 1 end
    end
    assert.are.equal(1, posts)
    w:Abort()
  end)

  it("injects the same sequence twice from the same seed", function()
    -- Each connection's faults come from (seed, connection index) alone: both
    -- runs inject exactly what the plan says, and agree while their traffic
    -- does (how much the server kept before a reset may differ by timing,
    -- which can shift the tail).
    local seed = seed_resetting(0.5, 4 * MiB)
    local function run(name)
      local p = testbed.faults.profile { seed = seed, reset_per_mib = 0.5 }
      local w = writer(srv, name, { faults = p })
      upload(w, 8)
      check_object(srv, name, 8)
      local seq = {}
      for i, e in ipairs(p:events()) do
        assert.are.equal("reset", e.kind)
        assert.are.equal(p:plan(e.conn).reset_at, e.pos)
        seq[i] = ("%d:%s@%d"):format(e.conn, e.kind, e.pos)
      end
      return seq
    end
    local a, b = run("same1"), run("same2")
    assert.truthy(#a > 0 and #b > 0)
    local common = 0
    while common < math.min(#a, #b) and a[common + 1] == b[common + 1] do common = common + 1 end
    io.stderr:write(("[faults] same seed: %d and %d events, first %d identical\n"):format(#a, #b, common))
    assert.truthy(common >= 1)
  end)

  it("logs the relay's lines through the core's log (testbed.so's copy forwards them)", function()
    -- The relay (in testbed.so) logs each injected fault at debug level; the
    -- lines reach rw.log's capture in core.so, so levels and hooks are one.
    local seed = seed_resetting(0.5, 4 * MiB)
    local p = testbed.faults.profile { seed = seed, reset_per_mib = 0.5 }
    rw.log.capture("debug")
    local ok, e = pcall(function()
      local w = writer(srv, "logged", { faults = p })
      upload(w, 8)
    end)
    local lines = rw.log.stop()
    assert(ok, e)
    check_object(srv, "logged", 8)
    assert.truthy(p:stats().resets > 0)
    assert.is_true(H.has_line(lines, "reliablewriter debug: faults: connection %d+: reset at byte"),
      "no relay line among " .. #lines .. " captured (seed " .. seed .. ")")
  end)
end)

describe("testbed.faults.proxy", function()
  local srv
  before_each(function() srv = start_fake() end)
  after_each(function() srv:stop(); collectgarbage() end)

  it("checks its options", function()
    assert.truthy(H.raised(testbed.faults.proxy, { upstream = srv:url(), nope = 1 }):find("nope", 1, true))
    assert.truthy(H.raised(testbed.faults.proxy, {}):find("upstream", 1, true))
    assert.truthy(H.raised(testbed.faults.proxy, { upstream = srv:url(), profile = {} }):find("profile", 1, true))
    local px, err = testbed.faults.proxy { upstream = UNRESOLVABLE .. ":80" }
    assert.is_nil(px)
    assert.are.equal("net.dns", err.code)
  end)

  it("relays curl uploads and downloads, and stops", function()
    local p = testbed.faults.profile { seed = H.seed, latency = 0.001 }
    local px = assert(testbed.faults.proxy { listen = "127.0.0.1:0", upstream = srv:url(), profile = p })
    assert.truthy(px:url():match("^http://127%.0%.0%.1:%d+$"))
    assert.are.equal(px:url(), "http://" .. px:addr())
    assert.are.equal(tonumber(px:addr():match(":(%d+)$")), px:port())
    local path = os.tmpname()
    local f = io.open(path, "wb"); f:write(mib(1), mib(2)); f:close()
    local pipe = io.popen(("curl -s -o /dev/null -w '%%{http_code}' -X POST --data-binary @%s "
      .. "-H 'Content-Type: application/octet-stream' '%s/upload/storage/v1/b/b/o?uploadType=media&name=c'")
      :format(path, px:url()))
    assert.are.equal("200", pipe:read("*a"))
    pipe:close()
    assert.are.equal(mib(1) .. mib(2), srv:object("b", "c"))
    pipe = io.popen(("curl -s '%s/storage/v1/b/b/o/c?alt=media'"):format(px:url()))
    assert.are.equal(mib(1) .. mib(2), pipe:read("*a"))
    pipe:close()
    os.remove(path)
    assert.truthy(px:stats().connections >= 2)
    assert.truthy(p:stats().bytes_up > 2 * MiB and p:stats().bytes_down > 2 * MiB)
    px:stop()
    assert.truthy(H.raised(px.url, px):find("closed", 1, true))
    px:stop() -- twice is fine
    assert.are.equal(0, p:stats().active)
  end)

  it("is closed by __close and __gc", function()
    local p = testbed.faults.profile { seed = H.seed }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    getmetatable(px).__close(px)
    assert.truthy(tostring(px):find("stopped", 1, true))
    assert.truthy(H.raised(px.addr, px):find("closed chaos proxy", 1, true))
    local threads = testbed.probes.thread_count()
    px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    assert.are.equal(threads + 1, testbed.probes.thread_count()) -- the accept thread
    px = nil
    collectgarbage(); collectgarbage()
    assert.are.equal(threads, testbed.probes.thread_count())
  end)

  it("refuses connections past max_connections; relay threads stay bounded", function()
    -- A helper process opens n connections at once and holds them; each sends
    -- a request and reports whether it was answered. The proxy admits the
    -- first `bound` (in accept order) and resets the rest; the process's
    -- threads (/proc/self/task) grow by the accept thread plus, per admitted
    -- connection, its relay and the fake's connection thread: never per
    -- connection opened.
    local bound, n = 3, 10
    local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
    local function tasks()
      local pipe = io.popen("ls /proc/" .. pid .. "/task | wc -l")
      local v = tonumber(pipe:read("*a"))
      pipe:close()
      return v
    end
    collectgarbage(); collectgarbage()
    local threads0 = tasks()
    local p = testbed.faults.profile { seed = H.seed, max_connections = bound }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local out = os.tmpname()
    local script = out .. ".sh"
    local f = assert(io.open(script, "w"))
    f:write([==[
trap '' PIPE # writing to a refused (reset) connection must not end the helper
port=$1 n=$2 out=$3
fds=()
for ((i = 0; i < n; i++)); do exec {fd}<>/dev/tcp/127.0.0.1/$port; fds+=($fd); done
for ((i = 0; i < n; i++)); do
  fd=${fds[$i]}
  printf 'GET /storage/v1/b/b HTTP/1.1\r\nHost: x\r\n\r\n' >&$fd 2>/dev/null
  if IFS= read -r -t 5 -u $fd line && [[ $line == "HTTP/1.1 200"* ]]; then echo ok; else echo refused; fi
done >"$out.res"
touch "$out.ready"
for ((k = 0; k < 300; k++)); do [[ -e $out.release ]] && break; sleep 0.1; done
]==])
    f:close()
    os.execute(("bash %s %d %d %s >/dev/null 2>&1 &"):format(script, px:port(), n, out))
    local ready = settle(function() local r = io.open(out .. ".ready"); if r then r:close() end return r ~= nil end, 20)
    -- Counted while the helper holds its connections: it lets go as soon as
    -- the release file exists (creating it before counting was a race the
    -- helper won under valgrind, where the count's popen is slow).
    local held_tasks, held = tasks(), p:stats()
    local results = {}
    if ready then for line in io.lines(out .. ".res") do results[#results + 1] = line end end
    assert(io.open(out .. ".release", "w")):close() -- the helper lets go
    assert.truthy(ready, "the helper did not finish")
    local want = {}
    for i = 1, n do want[i] = i <= bound and "ok" or "refused" end
    assert.are.same(want, results)
    assert.are.equal(n, held.connections)
    assert.are.equal(n - bound, held.refused)
    assert.are.equal(bound, held.active)
    local refusals = 0
    for _, e in ipairs(p:events()) do
      assert.are.equal("refuse", e.kind)
      assert.truthy(e.conn >= bound)
      refusals = refusals + 1
    end
    assert.are.equal(n - bound, refusals)
    io.stderr:write(("[faults] %d connections, bound %d: threads %d -> %d while held\n")
      :format(n, bound, threads0, held_tasks))
    assert.truthy(held_tasks >= threads0 + 1 + bound, ("threads %d, before %d"):format(held_tasks, threads0))
    assert.truthy(held_tasks <= threads0 + 1 + 2 * bound, ("threads %d, before %d"):format(held_tasks, threads0))
    -- Once let go, the relays end and new connections are admitted again.
    assert.truthy(settle(function() return p:stats().active == 0 end, 5))
    assert.truthy(settle(function() return tasks() == threads0 + 1 end, 5), ("threads %d, before %d"):format(tasks(), threads0))
    local pipe = io.popen(("curl -s -o /dev/null -w '%%{http_code}' '%s/storage/v1/b/b'"):format(px:url()))
    assert.are.equal("200", pipe:read("*a"))
    pipe:close()
    assert.are.equal(n - bound, p:stats().refused)
    px:stop()
    assert.truthy(settle(function() return tasks() == threads0 end, 5), ("threads %d, before %d"):format(tasks(), threads0))
    for _, suffix in ipairs { "", ".sh", ".res", ".ready", ".release" } do os.remove(out .. suffix) end
  end)

  it("truncates responses (curl sees a short body)", function()
    local so = io.popen(("curl -s -o /dev/null -X POST --data-binary @- -H 'Content-Type: application/octet-stream' "
      .. "'%s/upload/storage/v1/b/b/o?uploadType=media&name=t'"):format(srv:url()), "w")
    so:write(mib(0), mib(1), mib(2), mib(3)); so:close()
    local p = testbed.faults.profile { seed = H.seed, truncate_per_mib = 2 }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local pipe = io.popen(("curl -s '%s/storage/v1/b/b/o/t?alt=media'"):format(px:url()))
    local body = pipe:read("*a")
    pipe:close()
    assert.truthy(#body < 4 * MiB)
    assert.are.equal((mib(0) .. mib(1) .. mib(2) .. mib(3)):sub(1, #body), body)
    assert.are.equal(1, p:stats().truncates)
    px:stop()
  end)

  it("puts the writer through the same schedule", function()
    local p = testbed.faults.profile { seed = seed_resetting(0.5, 4 * MiB), reset_per_mib = 0.5, refuse = 0.2 }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local w = assert(rw.new(rw.context.background(), {
      sink = rw.gcs { bucket = "b", object = "px", endpoint = px:url(), if_generation_match = 0 },
      min_chunk_size = 256 * 1024, max_chunk_size = 8 * MiB, retry = retry(), stall_timeout = 2 }))
    upload(w, 16)
    check_object(srv, "px", 16)
    assert.truthy(p:stats().resets > 0)
    px:stop()
  end)

  it("runs as a program (bin/reliablewriter-chaos)", function()
    local bin = "bin/reliablewriter-chaos"
    if not io.open(bin) then
      io.stderr:write("[faults] bin/reliablewriter-chaos missing (make bins): skipped\n")
      return
    end
    local out = os.tmpname()
    os.execute(("%s --upstream %s --seed %d --reset-per-mib 0.5 > %s 2>&1 & echo $! > %s.pid")
      :format(bin, srv:url(), H.seed % 100000, out, out))
    local url
    assert.truthy(settle(function()
      local f = io.open(out); url = f and f:read("*l"); if f then f:close() end
      return url and url:match("^http://") ~= nil
    end, 5))
    local pidf = io.open(out .. ".pid"); local pid = pidf:read("*l"); pidf:close()
    local pipe = io.popen(("curl -s -o /dev/null -w '%%{http_code}' '%s/storage/v1/b/b'"):format(url))
    assert.are.equal("200", pipe:read("*a"))
    pipe:close()
    os.execute("kill -TERM " .. pid)
    assert.truthy(settle(function()
      local f = io.open(out); local s = f:read("*a"); f:close()
      return s:find("connections 1", 1, true) ~= nil
    end, 5))
    os.remove(out); os.remove(out .. ".pid")
    local f = io.popen(bin .. " --bogus 2>&1"); local usage = f:read("*a"); f:close()
    assert.truthy(usage:find("unknown option '--bogus'", 1, true))
  end)
end)

-- Issue 9: latency is a delay line (each byte leaves `latency` after it
-- arrived, per direction), bandwidth a token bucket per connection, and
-- `window` bounds the bytes in flight per direction: one connection moves
-- about min(bandwidth, window / (2 x latency)). Measured with curl against
-- the fake GCS in discard mode (a plain loopback sink), not with the writer.
describe("latency that behaves like a network", function()
  local srv
  before_each(function() srv = testbed.fakegcs.start { store = "discard", buckets = { "b" } } end)
  after_each(function() srv:stop(); collectgarbage() end)

  local files = {}
  -- A file of n MiB (MiB i is mib(i)), made once per size.
  local function data_file(n)
    if files[n] then return files[n] end
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    for i = 0, n - 1 do f:write(mib(i)) end
    f:close()
    files[n] = path
    return path
  end
  teardown(function() for _, path in pairs(files) do os.remove(path) end end)

  -- The curl command that uploads `path` as object `name` through `url`
  -- (no "Expect: 100-continue" wait) and prints code, size and seconds.
  local function curl_upload(url, path, name)
    return ("curl -s -o /dev/null -H 'Expect:' -H 'Content-Type: application/octet-stream' "
      .. "-w '%%{http_code} %%{size_upload} %%{time_total}\\n' --data-binary @%s "
      .. "'%s/upload/storage/v1/b/b/o?uploadType=media&name=%s'"):format(path, url, name)
  end

  -- Uploads n MiB through url; checks the object against a direct upload of
  -- the same bytes (size and CRC32C) and returns MiB/s.
  local function rate_of(line, n, name)
    local code, size, secs = line:match("^(%d+) (%d+) ([%d.]+)")
    assert.are.equal("200", code, name .. ": " .. tostring(line))
    assert.are.equal(n * MiB, tonumber(size))
    local _, meta = srv:object("b", name)
    assert.are.equal(tostring(n * MiB), tostring(meta.size))
    return n / tonumber(secs), meta.crc32c
  end

  local function upload_rate(url, n, name)
    local pipe = io.popen(curl_upload(url, data_file(n), name))
    local line = pipe:read("*l")
    pipe:close()
    return rate_of(line, n, name)
  end

  local function reference_crc(n)
    local _, crc = upload_rate(srv:url(), n, "ref-" .. n)
    return crc
  end

  -- Seconds from a request's last byte to the reply's first, for k small GETs.
  local function ping_times(url, k)
    local t = {}
    for i = 1, k do
      local pipe = io.popen(("curl -s -o /dev/null -w '%%{time_pretransfer} %%{time_starttransfer}' '%s/storage/v1/b/b'")
        :format(url))
      local a, b = pipe:read("*a"):match("([%d.]+) ([%d.]+)")
      pipe:close()
      t[i] = tonumber(b) - tonumber(a)
    end
    table.sort(t)
    return t
  end

  it("checks the window option: a whole number of bytes in [1024, 2^30]", function()
    for _, bad in ipairs { 1.5, 100, 2 ^ 31, "4M", -1 } do
      local msg = H.raised(testbed.faults.profile, { window = bad })
      assert.truthy(msg:find("window", 1, true), msg)
    end
    assert.is_not_nil(testbed.faults.profile { window = 64 * 1024, latency = 0.01 })
    assert.are.equal(0, testbed.faults.profile():stats().in_flight_max)
  end)

  it("one connection at 20 ms and 50 MiB/s moves >= 40 MiB/s (64 MiB); four at once each get their own cap", function()
    local p = testbed.faults.profile { seed = H.seed, latency = 0.02, bandwidth = 50 * MiB }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local want_crc = reference_crc(64)
    local rate, crc = upload_rate(px:url(), 64, "one")
    io.stderr:write(("[faults] delay line: 64 MiB at 20 ms, 50 MiB/s cap, 4 MiB window: %.1f MiB/s\n"):format(rate))
    assert.are.equal(want_crc, crc)
    assert.truthy(rate >= 40, ("%.1f MiB/s"):format(rate))
    assert.truthy(rate <= 50 * 1.05, ("%.1f MiB/s"):format(rate))
    assert.truthy(p:stats().in_flight_max <= 4 * MiB)
    px:stop()

    -- 10 MiB/s each: a cap shared by the profile would give each 2.5 MiB/s.
    p = testbed.faults.profile { seed = H.seed, latency = 0.02, bandwidth = 10 * MiB }
    px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    want_crc = reference_crc(16)
    local out = os.tmpname()
    local cmds = {}
    for i = 1, 4 do cmds[i] = curl_upload(px:url(), data_file(16), "four-" .. i) .. (" > %s.%d &"):format(out, i) end
    os.execute(table.concat(cmds, "\n") .. "\nwait")
    local rates = {}
    for i = 1, 4 do
      local f = assert(io.open(out .. "." .. i))
      local line = f:read("*l")
      f:close()
      os.remove(out .. "." .. i)
      rates[i], crc = rate_of(line, 16, "four-" .. i)
      assert.are.equal(want_crc, crc)
    end
    os.remove(out)
    io.stderr:write(("[faults] delay line: 4 connections x 16 MiB at 20 ms, 10 MiB/s cap each: %.1f %.1f %.1f %.1f MiB/s\n")
      :format(rates[1], rates[2], rates[3], rates[4]))
    for i = 1, 4 do
      assert.truthy(rates[i] >= 10 * 0.7, ("connection %d: %.1f MiB/s"):format(i, rates[i]))
      assert.truthy(rates[i] <= 10 * 1.05, ("connection %d: %.1f MiB/s"):format(i, rates[i]))
    end
    assert.are.equal(4, p:stats().connections)
    px:stop()
  end)

  it("a window of 256 KiB at 25 ms moves one window per round trip and never has more in flight", function()
    local p = testbed.faults.profile { seed = H.seed, latency = 0.025, window = 256 * 1024 }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local expect = 0.25 / (2 * 0.025)
    local rate = upload_rate(px:url(), 8, "window")
    local most = p:stats().in_flight_max
    io.stderr:write(("[faults] delay line: 8 MiB at 25 ms, 256 KiB window: %.2f MiB/s (window / RTT %.2f), most in flight %d\n")
      :format(rate, expect, most))
    assert.truthy(rate <= expect * 1.1, ("%.2f MiB/s"):format(rate))
    assert.truthy(rate >= expect * 0.6, ("%.2f MiB/s"):format(rate))
    assert.truthy(most <= 256 * 1024 and most >= 128 * 1024, "in flight " .. most)
    px:stop()
  end)

  it("a request and its reply take 2 x latency, not more than that and some slack", function()
    local p = testbed.faults.profile { seed = H.seed, latency = 0.02, bandwidth = 50 * MiB }
    local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
    local t = ping_times(px:url(), 7)
    io.stderr:write(("[faults] delay line: request/reply at 20 ms: min %.1f ms, median %.1f ms, max %.1f ms\n")
      :format(t[1] * 1e3, t[4] * 1e3, t[7] * 1e3))
    assert.truthy(t[1] >= 0.04 - 0.001, t[1]) -- curl rounds its times to microseconds
    assert.truthy(t[4] <= 0.04 + 0.025, t[4])
    px:stop()
  end)

  it("a reset still lands on its scheduled byte, run after run with the same seed", function()
    local seed = seed_resetting(0.5, 4 * MiB)
    local opts = { seed = seed, reset_per_mib = 0.5, latency = 0.005, bandwidth = 32 * MiB, window = 128 * 1024 }
    local at = testbed.faults.profile(opts):plan(0).reset_at
    for run = 1, 2 do
      local p = testbed.faults.profile(opts)
      local px = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
      local pipe = io.popen(curl_upload(px:url(), data_file(8), "reset"))
      pipe:read("*a")
      pipe:close()
      px:stop()
      local ev = p:events()
      io.stderr:write(("[faults] delay line: run %d: reset at byte %s (planned %d)\n")
        :format(run, ev[1] and ev[1].pos or "none", at))
      assert.are.equal(1, #ev)
      assert.are.equal("reset", ev[1].kind)
      assert.are.equal(at, ev[1].pos)
    end
  end)

  it("bin/reliablewriter-chaos takes --latency, --bandwidth and --window", function()
    local bin = "bin/reliablewriter-chaos"
    if not io.open(bin) then
      io.stderr:write("[faults] bin/reliablewriter-chaos missing (make bins): skipped\n")
      return
    end
    for _, bad in ipairs { "12.5", "100", "2000000000", "x" } do
      local f = io.popen(bin .. " --upstream " .. srv:url() .. " --window " .. bad .. " 2>&1; echo rc=$?")
      local s = f:read("*a")
      f:close()
      assert.truthy(s:find("--window must be a whole number of bytes", 1, true), s)
      assert.truthy(s:find("rc=2", 1, true), s)
    end
    local out = os.tmpname()
    os.execute(("%s --upstream %s --latency 0.02 --bandwidth %d --window %d > %s 2>&1 & echo $! > %s.pid")
      :format(bin, srv:url(), 50 * MiB, 4 * MiB, out, out))
    local url
    assert.truthy(settle(function()
      local f = io.open(out); url = f and f:read("*l"); if f then f:close() end
      return url and url:match("^http://") ~= nil
    end, 5))
    local pidf = io.open(out .. ".pid"); local pid = pidf:read("*l"); pidf:close()
    local want_crc = reference_crc(64)
    local rate, crc = upload_rate(url, 64, "bin")
    local t = ping_times(url, 5)
    os.execute("kill -TERM " .. pid)
    settle(function()
      local f = io.open(out); local s = f:read("*a"); f:close()
      return s:find("connections", 1, true) ~= nil
    end, 5)
    os.remove(out); os.remove(out .. ".pid")
    io.stderr:write(("[faults] reliablewriter-chaos --latency 0.02 --bandwidth 50 MiB/s: 64 MiB at %.1f MiB/s, "
      .. "request/reply median %.1f ms\n"):format(rate, t[3] * 1e3))
    assert.are.equal(want_crc, crc)
    assert.truthy(rate >= 40, ("%.1f MiB/s"):format(rate))
    assert.truthy(t[1] >= 0.04 - 0.001 and t[3] <= 0.04 + 0.025, ("%.1f ms"):format(t[3] * 1e3))
  end)
end)
