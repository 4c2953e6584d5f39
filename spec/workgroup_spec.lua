local H = require "helpers"
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
