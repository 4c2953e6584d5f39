-- core.wakeup: the bridge the ngx waiting policy waits on (csrc/core/wakeup.c;
-- its signalling is tested in tests/c/test_wakeup.c and, inside nginx, by
-- tests/openresty/run.sh). Here: the Lua face, its errors and its lifetime.
local H = require "helpers"
local rw = H.rw()
local wakeup = rw.core.wakeup

describe("core.wakeup", function()
  it("makes a socket in a fresh folder and removes both on close, without a thread", function()
    local b = assert(wakeup.new())
    local path = b:path()
    assert.truthy(path:match("/rw%-wake%.[%w]+/s$"), path)
    assert.truthy(io.open(path:gsub("/s$", ""), "r"), "folder exists")
    local st = b:stats()
    assert.equal(0, st.slots)
    assert.is_false(st.thread) -- nothing runs before the first arm
    b:close()
    b:close() -- twice is fine
    assert.is_nil(io.open(path, "r"))
    assert.has_error(function() b:path() end, "attempt to use a closed wake-up bridge")
  end)

  it("names the folder and the rule when it cannot listen", function()
    local b, err = wakeup.new("/nonexistent/rw-folder")
    assert.is_nil(b)
    assert.equal("rw.invalid_argument", err.code)
    assert.truthy(err.message:find("/nonexistent/rw-folder", 1, true), err.message)
    b, err = wakeup.new("/" .. string.rep("a", 150))
    assert.is_nil(b)
    assert.truthy(err.message:find("too long for a unix socket path", 1, true), err.message)
  end)

  it("registers slots; an unbound slot cannot be armed; release is idempotent", function()
    local b = assert(wakeup.new())
    local id1, tok1 = b:register()
    local id2, tok2 = b:register()
    assert.is_true(id1 ~= id2 and tok1 ~= tok2)
    assert.equal(16, #tok1)
    assert.is_false(b:bind(id1)) -- nobody connected
    local ok, err = b:arm(id1, 0)
    assert.is_nil(ok)
    assert.equal("rw.invalid_argument", err.code)
    assert.truthy(err.message:find("not bound", 1, true), err.message)
    assert.equal(2, b:stats().slots)
    b:release(id1)
    b:release(id1)
    assert.equal(1, b:stats().slots)
    assert.has_error(function() b:arm(0, 1) end)
    b:close() -- frees the remaining slot
  end)
end)
