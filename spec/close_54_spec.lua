-- Lua 5.4 only: to-be-closed variables (LuaJIT cannot parse this file).
local H = require "helpers"
local rw = H.rw()

describe("<close> (Lua 5.4)", function()
  it("cancels at scope exit with <close>", function()
    local outer = rw.context.background()
    local kept
    do
      local c <close> = outer:with_timeout(5)
      kept = c:with_cancel()
      assert.is_false(kept:done())
    end
    assert.is_true(kept:done())
  end)

end)
