-- The default credential chain's shared cache (csrc/net/auth.c). Under
-- valgrind (scripts/valgrind-specs.sh runs spec/valgrind/*): a GCS sink made
-- with the default chain left its cached credential behind when Lua closed
-- the module at exit (the registry's pointer went with the unloaded library:
-- "definitely lost", 5.5 KB per process). Nothing here talks to a network:
-- the chain is resolved at the first request, and none is made.
local H = require "helpers"
local rw = H.rw()

describe("default credentials", function()
  it("are shared by every sink of the process and released with the module", function()
    assert.is_nil(os.getenv("STORAGE_EMULATOR_HOST"), "the default chain is off with an emulator set")
    local sinks = {}
    for i = 1, 5 do
      sinks[i] = assert(rw.gcs { bucket = "b", object = "o" .. i })
      assert.truthy(tostring(sinks[i]):find("gs://b/o" .. i, 1, true))
    end
    sinks = nil
    collectgarbage(); collectgarbage()
  end)
end)
