local H = require "helpers"
local rw = H.rw()
local ratelimit = rw.ratelimit

describe("ratelimit", function()
  it("allows a burst, then refuses", function()
    local rl = ratelimit.new { rate = 10, burst = 5 }
    for _ = 1, 5 do assert.is_true(rl:try(1)) end
    assert.is_false(rl:try(1))
  end)

  it("reserve returns the debt as a delay", function()
    local rl = ratelimit.new { rate = 100, burst = 10 }
    assert.equal(0, rl:reserve(10))
    local d = rl:reserve(5)
    assert.is_true(d > 0.04 and d < 0.06, d)
    rl:cancel(5)
    assert.is_true(rl:tokens() > -0.5)
  end)

  it("holds the long-run rate within 5%", function()
    local rl = ratelimit.new { rate = 400, burst = 4 }
    local ctx = rw.context.background()
    local t0 = H.now()
    local n = 0
    while H.now() - t0 < 1.0 do
      assert(rl:wait(ctx, 2))
      n = n + 2
    end
    local rate = (n - 4) / (H.now() - t0)
    assert.is_true(rate > 380 and rate < 420, "rate " .. rate)
  end)

  it("fails at once when the wait would pass the deadline, and gives tokens back", function()
    local rl = ratelimit.new { rate = 1, burst = 1 }
    assert.is_true(rl:try(1))
    local ctx = rw.context.background():with_timeout(0.1)
    local t0 = H.now()
    local ok, err = rl:wait(ctx, 1)
    assert.is_nil(ok)
    assert.equal("rw.deadline_exceeded", err.code)
    assert.is_true(H.now() - t0 < 0.05)
    assert.is_true(rl:tokens() > -0.1)
  end)

  it("rejects bad input", function()
    assert.matches("'rate' is required", H.raised(ratelimit.new, {}))
    assert.matches("rate", H.raised(ratelimit.new, { rate = 0 }))
    assert.matches("burst", H.raised(ratelimit.new, { rate = 1, burst = 0 }))
    assert.matches("unknown option 'brust'", H.raised(ratelimit.new, { rate = 1, brust = 2 }))
    local rl = ratelimit.new { rate = 1, burst = 2 }
    assert.matches("burst", H.raised(rl.reserve, rl, 3))
    assert.matches("n %(tokens%)", H.raised(rl.try, rl, -1))
    rl:close()
    assert.matches("closed rate limiter", H.raised(rl.try, rl, 1))
  end)

  it("wait() gives its tokens back when cancelled mid-sleep", function()
    local rl = ratelimit.new { rate = 10, burst = 1 }
    assert.is_true(rl:try(1)) -- empty now: the next token is 0.1 s away
    local ctx = rw.context.background():with_cancel()
    local wg = rw.workgroup.new {}
    local got
    wg:go(function() got = { rl:wait(ctx, 1) } end)
    wg:go(function()
      rw.context.background():with_timeout(0.03):wait()
      ctx:cancel("stop")
    end)
    assert(wg:wait())
    assert.is_nil(got[1])
    assert.is_truthy(got[2])
    -- given back: the next token is still about 0.07 s away, not 0.17 s
    local d = rl:reserve(1)
    assert.is_true(d < 0.1, "next token in " .. d .. " s")
  end)
end)
