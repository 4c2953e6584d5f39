-- Lua 5.4 only: to-be-closed variables (LuaJIT cannot parse this file).
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()

-- curl's exit code for a GET of url (7: could not connect).
local function curl_exit(url)
  local _, _, code = os.execute(("curl -s -o /dev/null --max-time 5 '%s'"):format(url))
  return code
end

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

  it("stops a fake GCS at scope exit, also when the scope raises", function()
    local url, kept
    do
      local s <close> = testbed.fakegcs.start { buckets = { "b" } }
      url, kept = s:url(), s
      assert.are.equal(0, curl_exit(url .. "/storage/v1/b/b"))
    end
    assert.are.equal(7, curl_exit(url .. "/storage/v1/b/b"))
    assert.truthy(H.raised(kept.url, kept):find("attempt to use a closed fakegcs", 1, true))
    local ok, err = pcall(function()
      local s <close> = testbed.fakegcs.start {}
      url = s:url()
      error("boom")
    end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("boom", 1, true))
    assert.are.equal(7, curl_exit(url .. "/storage/v1/b"))
  end)

  it("stops a chaos proxy at scope exit", function()
    local srv <close> = testbed.fakegcs.start { buckets = { "b" } }
    local p = testbed.faults.profile { seed = H.seed }
    local url
    do
      local px <close> = assert(testbed.faults.proxy { upstream = srv:url(), profile = p })
      url = px:url()
      assert.are.equal(0, curl_exit(url .. "/storage/v1/b/b"))
    end
    assert.are.equal(0, p:stats().active)
    assert.are.equal(7, curl_exit(url .. "/storage/v1/b/b"))
  end)
end)
