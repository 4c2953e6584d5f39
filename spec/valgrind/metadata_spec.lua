-- The metadata option of rw.gcs{} and rw.proxy_sink{} (one conversion,
-- rw_lua_opt_json_object in csrc/lua/lrw.c). Under valgrind
-- (scripts/valgrind-specs.sh runs spec/valgrind/*): a refused table leaves
-- nothing behind (the GCS sink's copy leaked the JSON it had made so far when
-- a nested table had number keys; the proxy sink's crashed on a list with a hole).
local H = require "helpers"
local rw = H.rw()

local refused = {
  { a = { 1, 2, x = 3 }, b = "c" },
  { a = { 1, nil, 3 } },
  { a = { [1] = 1, [3] = 3 } },
  { z = { y = { 1, 2, [10] = 5 } } },
  { a = { [1.5] = 1 } },
}

local function gcs(md) return rw.gcs { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1", metadata = md } end
local function proxy(md)
  return rw.proxy_sink { addr = "127.0.0.1:1", secret = ("k"):rep(32), bucket = "b", object = "o", metadata = md }
end

describe("metadata", function()
  it("refuses a table that is neither a list nor has string keys, at any depth, for both sinks", function()
    for _, make in ipairs { gcs, proxy } do
      for _, md in ipairs(refused) do
        local msg = H.raised(make, md)
        assert.truthy(msg:find("option 'metadata' must have string keys (or be a list)", 1, true), msg)
      end
    end
  end)

  it("takes nested objects, lists, booleans and numbers", function()
    local md = { contentType = "text/plain", metadata = { k = "v", n = 3 }, tags = { "a", { b = true } }, x = 1.5,
                 empty = {} }
    assert.equal("gcs", gcs(md):kind())
    assert.equal("proxy", proxy(md):kind())
    collectgarbage()
  end)
end)
