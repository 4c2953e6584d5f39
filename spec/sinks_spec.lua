-- Sink descriptors: configs checked strictly, live sinks made per writer in C.
local H = require "helpers"
local core = require "reliablewriter.core"
local sinks = core.sinks

describe("sinks", function()
  it("makes gcs descriptors with all documented options", function()
    local d = sinks.gcs {
      bucket = "b", object = "dir/o", endpoint = "http://127.0.0.1:1",
      metadata = { contentType = "text/plain", metadata = { k = "v", n = 3 }, tags = { "a", "b" } },
      if_generation_match = 0, headers = { ["x-retry-test-id"] = "id-1" },
      connect_timeout = 2.5, token = "t", faults = { seed = 7 },
    }
    assert.is_true(sinks.is_sink(d))
    assert.equal("gcs", d:kind())
    assert.equal("sink gcs gs://b/dir/o", tostring(d))
    assert.equal(7, d:faults().seed)
    assert.is_nil(d:inner())
  end)

  it("resumes a gcs session with session_uri alone", function()
    local d = sinks.gcs { session_uri = "http://127.0.0.1:1/upload/x" }
    assert.equal("gcs", d:kind())
  end)

  it("rejects unknown options naming them", function()
    local msg = H.raised(sinks.gcs, { bucket = "b", object = "o", buckett = "x" })
    assert.truthy(msg:find("unknown option 'buckett'", 1, true), msg)
    msg = H.raised(sinks.file, { path = "/tmp/x", mode = "w" })
    assert.truthy(msg:find("unknown option 'mode'", 1, true), msg)
    msg = H.raised(sinks.faulty, sinks.file { path = "/tmp/x" }, { p_err = 1 })
    assert.truthy(msg:find("unknown option 'p_err'", 1, true), msg)
  end)

  it("checks types and ranges", function()
    local function bad(opts, pat)
      local msg = H.raised(sinks.gcs, opts)
      assert.truthy(msg:find(pat, 1, true), msg)
    end
    bad({ object = "o" }, "'bucket' is required")
    bad({ bucket = "b" }, "'object' is required")
    bad({ bucket = 1, object = "o" }, "'bucket' must be a non-empty string")
    bad({ bucket = "b", object = "o", if_generation_match = -1 }, "if_generation_match")
    bad({ bucket = "b", object = "o", if_generation_match = 1.5 }, "if_generation_match")
    bad({ bucket = "b", object = "o", connect_timeout = 0 }, "connect_timeout")
    bad({ bucket = "b", object = "o", headers = { 1 } }, "headers")
    bad({ bucket = "b", object = "o", headers = { ["bad name"] = "v" } }, "header")
    bad({ bucket = "b", object = "o", metadata = "x" }, "metadata")
    bad({ bucket = "b", object = "o", metadata = { f = print } }, "metadata")
    bad({ bucket = "b", object = "o", faults = 3 }, "faults")
    assert.truthy(H.raised(sinks.file, {}):find("'path' is required", 1, true))
  end)

  it("wraps a descriptor in a faulty one with strict codes", function()
    local inner = sinks.file { path = "/tmp/never-written" }
    local f = sinks.faulty(inner, { seed = 42, p_error = 0.5, codes = { "net.reset", "http.503" },
                                    p_partial = 0.25, p_after = 0.25 })
    assert.equal("faulty", f:kind())
    assert.equal(inner, f:inner())
    local st = f:stats()
    assert.same({ puts = 0, queries = 0, injected = 0, partial = 0, after = 0 }, st)
    local msg = H.raised(sinks.faulty, inner, { codes = { "net.nope" } })
    assert.truthy(msg:find("not a known error code", 1, true), msg)
    msg = H.raised(sinks.faulty, inner, { p_error = 1.5 })
    assert.truthy(msg:find("p_error", 1, true), msg)
    msg = H.raised(sinks.faulty, inner, { p_partial = 0.7, p_after = 0.7 })
    assert.truthy(msg:find("p_partial", 1, true), msg)
    assert.truthy(H.raised(sinks.faulty, {}, {}):find("bad argument #1", 1, true))
    assert.truthy(H.raised(inner.stats, inner):find("faulty", 1, true))
    -- nested faulty descriptors are fine
    assert.equal("faulty", sinks.faulty(f, { p_error = 0 }):kind())
  end)

  it("descriptors survive collection of their inner references", function()
    local f = sinks.faulty(sinks.file { path = "/tmp/x" })
    collectgarbage() collectgarbage()
    assert.equal("file", f:inner():kind())
  end)
end)
