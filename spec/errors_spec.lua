local H = require "helpers"
local rw = H.rw()
local errors = rw.errors

describe("errors", function()
  it("lists the registry with retryable flags", function()
    assert.is_true(errors.codes["net.reset"].retryable)
    assert.is_true(errors.codes["http.503"].retryable)
    assert.is_false(errors.codes["http.400"].retryable)
    assert.is_false(errors.codes["rw.canceled"].retryable)
    assert.is_false(errors.codes["gcs.precondition_failed"].retryable)
    for code, info in pairs(errors.codes) do
      assert.is_string(info.hint, code)
      assert.equal(info.retryable, errors.retryable(code), code)
    end
    assert.is_true(errors.retryable("http.502"))
    assert.is_false(errors.retryable("http.418"))
  end)

  it("carries code, message, cause, status, where and a unique id", function()
    local cause = errors.new { code = "net.reset", message = "peer reset" }
    local e = errors.new { code = "rw.retry_budget_exhausted", message = "gave up", cause = cause, status = 503 }
    assert.equal("rw.retry_budget_exhausted", e.code)
    assert.equal("gave up", e.message)
    assert.equal(503, e.status)
    assert.is_false(e.retryable)
    assert.is_true(e.cause.retryable)
    assert.equal(cause.id, e.cause.id)
    assert.not_equal(cause.id, e.id)
    assert.matches("errors_spec.lua:%d+", e.where)
    assert.is_true(e:is("net.reset"))
    assert.is_true(e:is("rw.retry_budget_exhausted"))
    assert.is_false(e:is("http.503"))
    local s = tostring(e)
    assert.matches("gave up", s, 1, true)
    assert.matches(e.id, s, 1, true)
    assert.matches("caused by peer reset", s, 1, true)
  end)

  it("makes errors from a code and message", function()
    local e = errors.new("http.429", "slow down")
    assert.is_true(e.retryable)
    assert.is_true(errors.is_error(e))
    assert.is_false(errors.is_error("x"))
  end)

  it("rejects bad input clearly", function()
    assert.matches("unknown option 'colour'", H.raised(errors.new, { colour = 1 }))
    assert.matches("option 'status'", H.raised(errors.new, { code = "x", status = 1000 }))
    assert.matches("bad argument #1", H.raised(errors.new, nil))
  end)

  it("carries its code's hint, and compares by identity", function()
    local e = errors.new { code = "net.reset", message = "x" }
    assert.equal(errors.codes["net.reset"].hint, e.hint)
    assert.is_string(e.hint)
    assert.is_true(#e.hint > 10)
    assert.is_nil(errors.new { code = "app.custom-" .. H.seed, message = "x" }.hint)
    assert.is_true(e == e)
    assert.is_false(e == errors.new { code = "net.reset", message = "x" })
  end)
end)
