-- rw.core.sinks.derive (csrc/lua/l_sinks.c): a refused option leaves nothing
-- behind. Under valgrind (scripts/valgrind-specs.sh runs spec/valgrind/*):
-- a session_uri with a bad connect_timeout leaked the URI's copy (definitely
-- lost) because the string was copied before the number was checked.
local H = require "helpers"
local rw = H.rw()

describe("sinks.derive", function()
  it("refuses a bad connect_timeout beside a session_uri, naming it, and leaks nothing", function()
    local sink = rw.gcs { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1" }
    for _, ct in ipairs { -1, 1e9, 0 / 0, "x" } do
      local msg = H.raised(rw.core.sinks.derive, sink, { session_uri = "http://127.0.0.1:1/upload/s", connect_timeout = ct })
      assert.truthy(msg:find("connect_timeout", 1, true), msg)
    end
    local d = rw.core.sinks.derive(sink, { session_uri = "http://127.0.0.1:1/upload/s", connect_timeout = 2 })
    assert.truthy(rw.core.sinks.is_sink(d))
  end)
end)
