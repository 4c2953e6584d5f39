local H = require "helpers"
local rw = H.rw()
local backoff = rw.backoff

describe("backoff", function()
  for _, jitter in ipairs { "full", "equal", "decorrelated", "none" } do
    it("keeps " .. jitter .. " jitter inside its bounds over many draws", function()
      local b = backoff.new { min_wait = 0.1, max_wait = 3, total_wait = 1e6, jitter = jitter, seed = H.seed % 1000000 + 1 }
      local sum, n, first_sum, last_sum = 0, 4000, 0, 0
      for i = 1, n do
        local d = assert(b:next())
        assert.is_true(d >= 0.1 and d <= 3, ("draw %d = %g"):format(i, d))
        if jitter ~= "decorrelated" then
          assert.is_true(d <= math.min(3, 0.1 * 2 ^ (i - 1)) + 1e-9)
        end
        if i <= 3 then first_sum = first_sum + d end
        if i > n - 1000 then last_sum = last_sum + d end
        sum = sum + d
      end
      -- short first, long later: the first 3 draws against the mean of the
      -- last 1000 (3 single late draws can be short under decorrelated jitter;
      -- over 2,000 seeds the means were at least 0.7 s apart)
      assert.is_true(first_sum / 3 < last_sum / 1000, "delays grow")
      if jitter == "full" then
        local mean = sum / n -- after the cap is reached: uniform in [0.1, 3]
        assert.is_true(mean > 1.3 and mean < 1.8, "mean " .. mean)
      elseif jitter == "none" then
        assert.near(3, last_sum / 1000, 1e-9)
      end
    end)
  end

  it("never exceeds total_wait and then fails with retry_budget_exhausted", function()
    local b = backoff.new { min_wait = 0.05, max_wait = 1, total_wait = 4, seed = 3 }
    local sum, d, err = 0, nil, nil
    repeat
      d, err = b:next()
      if d then sum = sum + d end
    until not d
    assert.is_true(sum <= 4)
    assert.equal("rw.retry_budget_exhausted", err.code)
    b:reset()
    assert.is_number(b:next())
  end)

  it("same seed, same delays", function()
    local a = backoff.new { seed = 42 }
    local b = backoff.new { seed = 42 }
    for _ = 1, 20 do assert.equal(a:next(), b:next()) end
  end)

  it("wait sleeps the delay and wakes at once on cancellation", function()
    local b = backoff.new { min_wait = 0.05, max_wait = 0.05, total_wait = 10, jitter = "none" }
    local ctx = rw.context.background()
    local t0 = H.now()
    assert.is_true(b:wait(ctx))
    assert.is_true(H.now() - t0 >= 0.045)
    local long = backoff.new { min_wait = 5, max_wait = 5, total_wait = 100, jitter = "none" }
    local c = rw.context.background():with_timeout(0.05)
    t0 = H.now()
    local ok, err = long:wait(c)
    assert.is_nil(ok)
    assert.equal("rw.deadline_exceeded", err.code)
    assert.is_true(H.now() - t0 < 1)
  end)

  it("rejects bad options naming the option and the rule", function()
    assert.matches("min_wait", H.raised(backoff.new, { min_wait = 0 }))
    assert.matches("min_wait", H.raised(backoff.new, { min_wait = 0 / 0 }))
    assert.matches("max_wait' must be >= min_wait", H.raised(backoff.new, { min_wait = 2, max_wait = 1 }))
    assert.matches("multiplier", H.raised(backoff.new, { multiplier = 0.5 }))
    assert.matches("total_wait", H.raised(backoff.new, { total_wait = -1 }))
    assert.matches("jitter' must be one of", H.raised(backoff.new, { jitter = "lots" }))
    assert.matches("unknown option 'maxwait'", H.raised(backoff.new, { maxwait = 1 }))
    assert.matches("min_wait", H.raised(backoff.new, { min_wait = "1" }))
    assert.matches("context expected", H.raised(backoff.new().wait, backoff.new(), nil))
  end)

  it("remaining() counts the budget down, attempts() counts the delays; reset() restores both", function()
    local b = backoff.new { min_wait = 0.01, max_wait = 0.05, total_wait = 0.2, jitter = "none" }
    assert.equal(0, b:attempts())
    assert.near(0.2, b:remaining(), 1e-9)
    local sum, n = 0, 0
    while true do
      local d = b:next()
      if not d then break end
      sum, n = sum + d, n + 1
      assert.equal(n, b:attempts())
      assert.near(0.2 - sum, b:remaining(), 1e-9)
    end
    assert.is_true(n >= 4)
    assert.is_true(b:remaining() >= 0)
    b:reset()
    assert.equal(0, b:attempts())
    assert.near(0.2, b:remaining(), 1e-9)
  end)

  it("multiplier sets the growth: without jitter each delay is the last times the multiplier, up to max_wait", function()
    for _, m in ipairs { 1.5, 2, 3 } do
      local b = backoff.new { min_wait = 0.01, max_wait = 1, total_wait = 100, multiplier = m, jitter = "none" }
      local last = b:next()
      assert.near(0.01, last, 1e-9)
      for _ = 1, 12 do
        local d = b:next()
        assert.near(math.min(1, last * m), d, 1e-9)
        last = d
      end
      assert.near(1, last, 1e-9)
    end
  end)
end)
