local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local workgroup = rw.workgroup

describe("workgroup", function()
  it("runs every task, at most limit at once", function()
    local wg = workgroup.new { limit = 3 }
    local running, peak, done = 0, 0, 0
    for i = 1, 10 do
      wg:go(function(k)
        running = running + 1
        peak = math.max(peak, running)
        rw.backoff.new({ min_wait = 0.01, max_wait = 0.01, jitter = "none" }):wait(wg:context())
        running = running - 1
        done = done + k
      end, i)
    end
    assert.is_true(wg:wait())
    assert.equal(55, done)
    assert.equal(3, peak)
  end)

  it("waits concurrently: 20 sleeps of 0.1 s take about 0.1 s", function()
    local wg = workgroup.new {}
    local ctx = rw.context.background()
    for _ = 1, 20 do
      wg:go(function()
        assert(rw.backoff.new({ min_wait = 0.1, max_wait = 0.1, jitter = "none" }):wait(ctx))
      end)
    end
    local t0 = H.now()
    assert.is_true(wg:wait())
    local took = H.now() - t0
    assert.is_true(took >= 0.09 and took < 0.6, "took " .. took)
  end)

  it("the first error cancels the group and is returned", function()
    local wg = workgroup.new { limit = 4 }
    assert.is_nil(wg:error())
    local woke = false
    wg:go(function()
      local ok, err = rw.backoff.new({ min_wait = 10, max_wait = 10, total_wait = 100 }):wait(wg:context())
      woke = (ok == nil and err ~= nil)
    end)
    wg:go(function() return nil, rw.errors.new("http.400", "bad") end)
    wg:go(function()
      rw.backoff.new({ min_wait = 0.05, max_wait = 0.05, jitter = "none" }):wait(rw.context.background())
      error("raised after the first error")
    end)
    local t0 = H.now()
    local ok, err = wg:wait()
    assert.is_nil(ok)
    assert.equal("http.400", err.code)
    assert.equal(err, wg:error()) -- error() keeps the first one, not the later raise
    assert.is_true(woke)
    assert.is_true(wg:context():done())
    assert.is_true(H.now() - t0 < 1)
  end)

  it("turns a raised error into the group's error", function()
    local wg = workgroup.new {}
    wg:go(function() error("boom") end)
    local ok, err = wg:wait()
    assert.is_nil(ok)
    assert.equal("rw.task_failed", err.code)
    assert.matches("boom", err.message)
  end)

  it("tasks can wait on contexts and rate limiters", function()
    local wg = workgroup.new {}
    local rl = rw.ratelimit.new { rate = 200, burst = 1 }
    local n = 0
    for _ = 1, 4 do
      wg:go(function()
        for _ = 1, 10 do assert(rl:wait(wg:context(), 1)); n = n + 1 end
      end)
    end
    local c = rw.context.background():with_timeout(0.05)
    wg:go(function() assert.is_true(c:wait()) end)
    local t0 = H.now()
    assert.is_true(wg:wait())
    assert.equal(40, n)
    assert.is_true(H.now() - t0 >= 0.15)
  end)

  it("rejects bad input", function()
    assert.matches("limit", H.raised(workgroup.new, { limit = 0 }))
    assert.matches("limit", H.raised(workgroup.new, { limit = 1.5 }))
    assert.matches("unknown option 'limt'", H.raised(workgroup.new, { limt = 1 }))
    local wg = workgroup.new {}
    assert.matches("function expected", H.raised(wg.go, wg, 5))
    wg:close()
    assert.matches("closed workgroup", H.raised(wg.go, wg, function() end))
  end)
end)

-- Issue #8 item 11: any number of waiting tasks, at a cost per ready wait,
-- not per waiting task; a failing scheduler stops every task.
describe("workgroup at scale", function()
  local util = rw.util
  local seed = H.seed

  local function settle_fds()
    collectgarbage()
    collectgarbage()
    return testbed.probes.fd_count()
  end

  local function rand(a, b) return a + (b - a) * math.random() end

  it("10,000 tasks waiting on timeouts, backoffs, rate limiters and cancelled contexts all finish", function()
    local fd0 = settle_fds()
    local wg = workgroup.new {}
    local N, NB, NR, NC, K = 10000, 300, 200, 1000, 20
    local timed, backed, limited, cancelled = {}, {}, {}, {}
    local fd_mid
    for i = 1, N do
      local d = rand(0.001, 0.3)
      wg:go(function()
        local t0 = H.now()
        local c = rw.context.background():with_timeout(d)
        assert(c:wait() == true)
        timed[i] = { d = d, took = H.now() - t0, code = c:err().code }
      end)
    end
    for i = 1, NB do
      local d = rand(0.01, 0.2)
      wg:go(function()
        local t0 = H.now()
        local ok = rw.backoff.new({ min_wait = d, max_wait = d, jitter = "none" }):wait(wg:context())
        backed[i] = { ok = ok, d = d, took = H.now() - t0 }
      end)
    end
    local rl = rw.ratelimit.new { rate = 1000, burst = 1 }
    for i = 1, NR do
      wg:go(function() limited[i] = rl:wait(wg:context(), 1) end)
    end
    local cs = {}
    for k = 1, K do cs[k] = rw.context.background():with_cancel() end
    for i = 1, NC do
      local c = cs[math.random(K)]
      wg:go(function()
        local t0 = H.now()
        local done = c:wait(10)
        cancelled[i] = { done = done, took = H.now() - t0, code = c:err() and c:err().code }
      end)
    end
    wg:go(function() -- cancels the K contexts from another task, once everyone waits
      rw.waiting.sleep(nil, 0.1)
      fd_mid = testbed.probes.fd_count()
      for k = 1, K do cs[k]:cancel() end
    end)
    local t0 = H.now()
    local ok, err = wg:wait()
    local took = H.now() - t0
    print(("[workgroup] seed=%d: %d waiting tasks finished in %.2f s (peak waiting %d, fds %d -> %d while waiting)")
      :format(seed, N + NB + NR + NC + 1, took, wg.stats and wg:stats().peak_waiting or -1, fd0, fd_mid or -1))
    assert.is_true(ok, tostring(err))
    assert.is_true(took < 20, "seed " .. seed .. ": took " .. took)
    assert.is_true(wg:stats().peak_waiting >= N, "seed " .. seed)
    -- waiting costs no fd per task: the wait set's two, whatever the count
    assert.is_true(fd_mid - fd0 <= 4, ("seed %d: %d fds while %d tasks waited"):format(seed, fd_mid - fd0, N))
    for i = 1, N do
      local r = timed[i]
      assert(r, "seed " .. seed .. ": timeout task " .. i .. " did not finish")
      assert.equal("rw.deadline_exceeded", r.code)
      assert(r.took >= r.d - 0.002, ("seed %d: task %d woke after %.4f s, before its %.4f s"):format(seed, i, r.took, r.d))
    end
    for i = 1, NB do
      assert(backed[i] and backed[i].ok == true, "seed " .. seed .. ": backoff task " .. i)
      assert(backed[i].took >= backed[i].d - 0.002, "seed " .. seed .. ": backoff woke early")
    end
    for i = 1, NR do assert(limited[i] == true, "seed " .. seed .. ": rate limited task " .. i) end
    for i = 1, NC do
      local r = cancelled[i]
      assert(r and r.done == true and r.code == "rw.canceled", "seed " .. seed .. ": cancelled task " .. i)
      assert(r.took >= 0.09 and r.took < 5, ("seed %d: woke after %.3f s"):format(seed, r.took))
    end
    timed, backed, cancelled, cs, wg = nil, nil, nil, nil, nil
    assert.equal(fd0, settle_fds(), "seed " .. seed .. ": fds after the group")
  end)

  it("10,000 tasks waiting on ONE context all wake when another task cancels it", function()
    local fd0 = settle_fds()
    local wg = workgroup.new {}
    local c = rw.context.background():with_cancel()
    local N, woke, waiting_at_cancel = 10000, 0, nil
    for _ = 1, N do
      wg:go(function()
        assert(c:wait() == true)
        woke = woke + 1
      end)
    end
    wg:go(function()
      rw.waiting.sleep(nil, 0.05)
      waiting_at_cancel = wg:stats().waiting
      c:cancel()
    end)
    local t0 = H.now()
    assert.is_true(wg:wait())
    local took = H.now() - t0
    print(("[workgroup] %d tasks on one context woke in %.2f s"):format(N, took))
    assert.equal(N, waiting_at_cancel)
    assert.equal(N, woke)
    assert.is_true(took < 10, "took " .. took)
    c, wg = nil, nil
    assert.equal(fd0, settle_fds())
  end)

  it("600 writers waited on at once all complete with the right bytes", function()
    local fd0 = settle_fds()
    local limit = tonumber(io.popen("ulimit -n"):read("l")) or 1024
    -- each writer holds about 3 fds (its eventfd, the file, a spare)
    local N = math.min(600, math.floor((limit - fd0 - 64) / 4))
    if N < 600 then print(("[workgroup] ulimit -n is %d: %d writers, not 600"):format(limit, N)) end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local wg = workgroup.new {}
    local gate = wg:context():with_cancel()
    local datas, results, written = {}, {}, 0
    local in_complete, peak_complete = 0, 0
    for i = 1, N do
      datas[i] = H.random_bytes(math.random(1, 64 * 1024))
      wg:go(function()
        local w = assert(rw.new(wg:context(), { sink = rw.file { path = dir .. "/obj-" .. i } }))
        assert(w:WriteAt(0, datas[i]))
        written = written + 1
        gate:wait() -- every writer is open before any completes
        in_complete = in_complete + 1
        peak_complete = math.max(peak_complete, in_complete)
        results[i] = { w:Complete() }
        in_complete = in_complete - 1
      end)
    end
    wg:go(function()
      while written < N do rw.waiting.sleep(nil, 0.01) end
      gate:cancel()
    end)
    local ok, err = wg:wait()
    print(("[workgroup] seed=%d: %d writers, peak %d waiting tasks, peak %d in Complete")
      :format(seed, N, wg:stats().peak_waiting, peak_complete))
    assert.is_true(ok, tostring(err))
    assert.is_true(wg:stats().peak_waiting >= N)
    for i = 1, N do
      assert(results[i] and results[i][1], ("seed %d: writer %d: %s"):format(seed, i, tostring(results[i] and results[i][2])))
      local f = assert(io.open(dir .. "/obj-" .. i, "rb"))
      local got = f:read("a")
      f:close()
      assert(got == datas[i], ("seed %d: writer %d: %d bytes on disk, %d written"):format(seed, i, #got, #datas[i]))
    end
    os.execute("rm -rf '" .. dir .. "'")
    results, gate, wg = nil, nil, nil
    assert.equal(fd0, settle_fds())
  end)

  it("a task waiting on an fd that another task closes still wakes (within the 1 s recheck)", function()
    local wg = workgroup.new {}
    local c = rw.context.background()
    local ready, woke_after = false, nil
    local w = { ready = function() return ready end, fds = { c:pollfd() },
      timeout = function() return nil end, block = function() end }
    local watchdog = rw.context.background():with_cancel()
    wg:go(function()
      local t0 = H.now()
      assert.equal("ready", rw.waiting.wait_for(w, wg:context(), nil))
      woke_after = H.now() - t0
      watchdog:cancel()
    end)
    wg:go(function() -- bounds the test when the wake is lost
      if not watchdog:wait(3) then return nil, rw.errors.new("rw.internal", "the waiting task never woke") end
    end)
    wg:go(function()
      rw.waiting.sleep(nil, 0.05)
      ready = true
      c, w.fds = nil, {}
      collectgarbage() -- closes the context's eventfd: it leaves the wait set unsignalled
      collectgarbage()
    end)
    assert.is_true(wg:wait())
    assert.is_true(woke_after < 2, "woke after " .. tostring(woke_after))
  end)

  it("a task's error cancels thousands of waiting tasks and their writers", function()
    local wg = workgroup.new {}
    local N, ended = 3000, {}
    for i = 1, N do
      wg:go(function()
        local c = wg:context():with_timeout(30)
        c:wait()
        ended[i] = c:err() and c:err().code
      end)
    end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local writers = {}
    for i = 1, 20 do
      wg:go(function()
        local w = assert(rw.new(wg:context(), { sink = rw.file { path = dir .. "/w-" .. i } }))
        writers[i] = w
        assert(w:WriteAt(0, H.random_bytes(1000)))
        local okc, errc = w:Complete(rw.context.background():with_timeout(0)) -- pending: the group's ctx ends it
        if not okc then wg:context():wait() end
        return okc and true or nil, errc
      end)
    end
    wg:go(function()
      rw.waiting.sleep(nil, 0.05)
      return nil, rw.errors.new("http.400", "the first error")
    end)
    local t0 = H.now()
    local ok, err = wg:wait()
    local took = H.now() - t0
    assert.is_nil(ok)
    assert.equal("http.400", err.code)
    assert.equal("the first error", err.message)
    assert.is_true(took < 5, "took " .. took)
    for i = 1, N do assert.equal("http.400", ended[i], "task " .. i) end
    for i = 1, 20 do
      local st = writers[i]:stats().state
      assert(st == "failed" or st == "aborted" or st == "done", "writer " .. i .. " is " .. st)
      writers[i]:Abort()
    end
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("a failing scheduler stops every task, whatever it waits on, and returns the error", function()
    local fd0 = settle_fds()
    local wg = workgroup.new {}
    local N, raised = 3000, {}
    for i = 1, N do
      wg:go(function()
        -- not the group's context: only the scheduler can end this wait
        local c = rw.context.background():with_timeout(30)
        local okw, e = pcall(c.wait, c)
        raised[i] = not okw and e
      end)
    end
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local held = setmetatable({}, { __mode = "v" })
    for i = 1, 10 do
      wg:go(function()
        local w = assert(rw.new(rw.context.background(), { sink = rw.file { path = dir .. "/w-" .. i } }))
        held[i] = w
        assert(w:WriteAt(0, H.random_bytes(1000)))
        rw.context.background():wait() -- waits forever unless stopped
      end)
    end
    wg:go(function() -- catches the abort and keeps waiting: bounded all the same
      for _ = 1, 1e6 do pcall(rw.waiting.sleep, nil, 30) end
    end)
    wg:go(function()
      rw.waiting.sleep(nil, 0.05)
      -- a waitable whose fd is not open: the wait set refuses it
      rw.waiting.wait_for({ ready = function() return false end, fds = { 1000000 },
        timeout = function() return nil end, block = function() end }, nil, nil)
    end)
    local t0 = H.now()
    local ok, err = wg:wait()
    local took = H.now() - t0
    assert.is_nil(ok)
    assert.is_true(rw.errors.is_error(err))
    assert.equal("rw.invalid_argument", err.code)
    assert.matches("fd 1000000", err.message)
    assert.is_true(took < 5, "took " .. took)
    assert.is_true(wg:context():done())
    assert.equal(err, wg:context():err())
    for i = 1, N do assert(raised[i] == err, "task " .. i .. " was not stopped by the scheduler's error") end
    collectgarbage()
    assert.is_nil(next(held), "a writer only its task held is still alive")
    local st = wg:stats()
    assert.equal(0, st.running)
    assert.equal(0, st.waiting)
    wg = nil
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(fd0, settle_fds())
  end)

  it("out of fds: wg:wait() returns rw.resource_exhausted and every task ends", function()
    local wg = workgroup.new {}
    local N, raised, started = 1000, 0, 0
    for _ = 1, N do
      wg:go(function()
        started = started + 1
        local c = wg:context():with_timeout(30)
        local okw = pcall(c.wait, c)
        if not okw then raised = raised + 1 end
      end)
    end
    local files = {}
    local limit = tonumber(io.popen("ulimit -n"):read("l")) or 1024
    for _ = 1, limit + 10 do -- fill the fd table (bounded by the limit)
      local f = io.open("/dev/null", "rb")
      if not f then break end
      files[#files + 1] = f
    end
    local ok, err = wg:wait()
    for _, f in ipairs(files) do f:close() end
    files = nil
    assert.is_nil(ok)
    assert.equal("rw.resource_exhausted", err.code)
    assert.matches("ulimit", err.message)
    -- the first wait fails: tasks that started raised it, the rest never start
    assert.is_true(started >= 1)
    assert.equal(started, raised)
    assert.equal(0, wg:stats().running)
    assert.equal(0, wg:stats().pending)
  end)
end)
