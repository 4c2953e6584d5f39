-- The ReliableReader against the fake GCS: random data (seed printed by
-- helpers), every read compared with what was written.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()

local srv, url
local ctx = rw.context.background()

local function put(name, data)
  local w = assert(rw.new(ctx, { sink = rw.gcs { bucket = "b", object = name, endpoint = url } }))
  assert(w:WriteAt(0, data))
  return assert(w:Complete())
end

-- POST /retry_test {"instructions":{"storage.objects.get":[...]}} with curl -> id
local function retry_test(list)
  local items = {}
  for i, v in ipairs(list) do items[i] = '"' .. v .. '"' end
  local body = '{"instructions":{"storage.objects.get":[' .. table.concat(items, ",") .. "]}}"
  local p = assert(io.popen(("curl -s --max-time 10 -X POST -H 'Content-Type: application/json' -d '%s' %s/retry_test")
    :format(body, url)))
  local out = p:read("a")
  p:close()
  return assert(out:match('"id"%s*:%s*"([^"]+)"'), out)
end

local function reader(name, opts, id)
  opts = opts or {}
  opts.source = rw.gcs { bucket = "b", object = name, endpoint = url,
                         headers = id and { ["x-retry-test-id"] = id } or nil }
  opts.retry = opts.retry or { min_wait = 0.01, max_wait = 0.05 }
  return assert(rw.reader(ctx, opts))
end

describe("reader", function()
  setup(function()
    srv = assert(testbed.fakegcs.start { buckets = { "b" } })
    url = srv:url()
  end)
  teardown(function() srv:stop() end)

  it("1,000 random ReadAt calls give the bytes written", function()
    local data = H.random_bytes(2 * 1024 * 1024 + math.random(0, 99999))
    put("rand", data)
    local r = reader("rand")
    local nonempty = 0
    for i = 1, 1000 do
      local off = math.random(0, #data)
      local len = math.random(0, math.min(#data - off, i % 10 == 0 and 300000 or 5000))
      if len > 0 then nonempty = nonempty + 1 end
      local s, err = r:ReadAt(off, len)
      assert(s, err)
      if s ~= data:sub(off + 1, off + len) then error(("seed %d: bytes differ at [%d, +%d)"):format(H.seed, off, len)) end
    end
    -- one GET per read that has bytes (a 0-length read needs none), plus any
    -- hedge a slow moment of a loaded machine caused
    local st = r:stats()
    assert.equal(nonempty, st.requests - st.hedges_issued, ("seed %d"):format(H.seed))
    r:close()
  end)

  it("reads the last byte, 0 bytes at the end, and fails past it naming the size", function()
    local data = H.random_bytes(1000 + math.random(0, 999))
    put("end", data)
    local r = reader("end")
    assert.equal(data:sub(-1), r:ReadAt(#data - 1, 1))
    assert.equal("", r:ReadAt(#data, 0))
    assert.equal(data, r:ReadAt(0, #data))
    local s, err = r:ReadAt(#data - 1, 2)
    assert.is_nil(s)
    assert.equal("rw.invalid_argument", err.code)
    assert.truthy(err.message:find(("size is %d bytes"):format(#data), 1, true), err.message)
    s, err = r:ReadAt(#data + 1, 0)
    assert.is_nil(s)
    assert.equal("rw.invalid_argument", err.code)
    local meta = r:stat()
    assert.equal(#data, meta.size)
    assert.truthy(meta.crc32c and meta.generation)
    assert.has_error(function() r:ReadAt(-1, 1) end)
    assert.has_error(function() r:ReadAt(0, 1.5) end)
    assert.has_error(function() rw.reader(ctx, { source = rw.gcs { bucket = "b", object = "x", endpoint = url }, bogus = 1 }) end)
    assert.has_error(function() rw.reader(ctx, { source = "x" }) end)
  end)

  it("ends the download conformance cases with identical bytes", function()
    local data = H.random_bytes(1024 * 1024 + math.random(0, 99999))
    put("conf", data)
    for _, case in ipairs { { "return-broken-stream", "return-broken-stream" }, { "return-broken-stream-after-256K" } } do
      local r = reader("conf", nil, retry_test(case))
      local s, err = r:ReadAt(0, #data)
      assert(s, err)
      assert.is_true(s == data, "bytes differ; seed " .. H.seed)
      assert.is_true(r:stats().retries >= 1)
      assert.equal(#data, r:stats().bytes) -- resumed from the last byte: none twice
      r:close()
    end
  end)

  it("resumes after a stall ended by the stall clock", function()
    local data = H.random_bytes(1024 * 1024)
    put("stall", data)
    local r = reader("stall", { stall_timeout = 0.5, max_hedges = 0 }, retry_test { "stall-for-5s-after-256K" })
    local t0 = H.now()
    local s, err = r:ReadAt(0, #data)
    assert(s, err)
    assert.is_true(s == data)
    assert.is_true(H.now() - t0 < 4)
    assert.equal(1, r:stats().retries)
    assert.equal(#data, r:stats().bytes)
  end)

  it("catches a generation change between two reads", function()
    local a, b = H.random_bytes(5000), H.random_bytes(5000)
    put("gen", a)
    local r = reader("gen")
    assert.equal(a:sub(1, 100), r:ReadAt(0, 100))
    put("gen", b)
    local s, err = r:ReadAt(0, 100)
    assert.is_nil(s)
    assert.equal("gcs.generation_changed", err.code)
    assert.is_false(err.retryable)
  end)

  it("pins a generation given in rw.gcs{ generation = }", function()
    local meta = put("pinned", H.random_bytes(100))
    put("pinned", H.random_bytes(100))
    local r = assert(rw.reader(ctx, { source = rw.gcs { bucket = "b", object = "pinned", endpoint = url,
                                                               generation = tonumber(meta.generation) } }))
    local s, err = r:ReadAt(0, 10)
    assert.is_nil(s)
    assert.equal("gcs.generation_changed", err.code)
  end)

  it("404 is gcs.not_found, not retried", function()
    local r = reader("missing")
    local s, err = r:ReadAt(0, 10)
    assert.is_nil(s)
    assert.equal("gcs.not_found", err.code)
    assert.equal(0, r:stats().retries)
  end)

  it("read_to_file writes the object (CRC checked) and a part; a corrupted download leaves no file", function()
    local data = H.random_bytes(600000 + math.random(0, 9999))
    put("file", data)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    local path = dir .. "/out.bin"
    local r = reader("file")
    assert(r:read_to_file(path))
    local f = assert(io.open(path, "rb"))
    assert.is_true(f:read("a") == data)
    f:close()
    assert(r:read_to_file(path, 1000, 5000))
    f = assert(io.open(path, "rb"))
    assert.is_true(f:read("a") == data:sub(1001, 6000))
    f:close()
    local n = 0
    assert(r:read_all(function(piece) n = n + #piece end))
    assert.equal(#data, n)
    r:close()
    os.remove(path)
    r = reader("file", nil, retry_test { "return-corrupted-data" })
    local ok, err = r:read_to_file(path)
    assert.is_nil(ok)
    assert.equal("gcs.checksum_mismatch", err.code)
    assert.is_nil(io.open(path, "rb"))
    local p = io.popen("ls -A " .. dir)
    assert.equal("", p:read("a"))
    p:close()
    r:close()
    r = reader("file", nil, retry_test { "return-corrupted-data" })
    ok, err = r:read_all(function() end)
    assert.is_nil(ok)
    assert.equal("gcs.checksum_mismatch", err.code)
    r:close()
    os.remove(dir)
  end)

  it("hedges a stalled first request: the hedge wins in under 1 s", function()
    local data = H.random_bytes(300000)
    put("hedge", data)
    local r = reader("hedge", { hedge_after = 0.2 }, retry_test { "stall-for-3s-after-0K" })
    local t0 = H.now()
    local s, err = r:ReadAt(1000, 200000)
    local took = H.now() - t0
    assert(s, err)
    assert.is_true(s == data:sub(1001, 201000))
    assert.is_true(took < 1, "took " .. took)
    local st = r:stats()
    assert.equal(1, st.hedges_issued)
    assert.equal(1, st.hedges_won)
  end)

  it("the budget bounds hedges when every request is slow", function()
    local data = H.random_bytes(50000)
    put("budget", data)
    local list = {}
    for i = 1, 40 do list[i] = "stall-for-0.3s-after-0K" end
    local r = reader("budget", { hedge_after = 0.05 }, retry_test(list))
    for i = 0, 19 do assert.is_true(r:ReadAt(i * 1000, 1000) == data:sub(i * 1000 + 1, i * 1000 + 1000)) end
    local st = r:stats()
    assert.is_true(st.hedges_issued >= 1)
    assert.is_true(st.hedges_issued <= 1 + 0.1 * (st.requests - st.hedges_issued),
      ("hedges %d of %d requests"):format(st.hedges_issued, st.requests))
  end)

  it("runs ReadAt calls from workgroup coroutines concurrently", function()
    local data = H.random_bytes(1024 * 1024)
    put("par", data)
    local list = {}
    for i = 1, 8 do list[i] = "stall-for-0.5s-after-0K" end
    local r = reader("par", { max_hedges = 0 }, retry_test(list))
    local wg = rw.workgroup.new { limit = 8 }
    local bad = 0
    for k = 1, 8 do
      wg:go(function()
        local off = (k - 1) * 100000
        local s = r:ReadAt(off, 100000)
        if s ~= data:sub(off + 1, off + 100000) then bad = bad + 1 end
      end)
    end
    local t0 = H.now()
    assert.is_true(wg:wait())
    local took = H.now() - t0
    assert.equal(0, bad)
    assert.is_true(took < 2, "8 reads stalled 0.5 s each took " .. took .. " s: not concurrent")
  end)

  it("a cancelled context ends a read at once; close makes the reader unusable", function()
    local data = H.random_bytes(10000)
    put("cancel", data)
    local r = reader("cancel", { max_hedges = 0 }, retry_test { "stall-for-5s-after-0K" })
    local c = rw.context.background():with_timeout(0.3)
    local t0 = H.now()
    local s, err = r:ReadAt(0, 100, c)
    assert.is_nil(s)
    assert.equal("rw.deadline_exceeded", err.code)
    assert.is_true(H.now() - t0 < 2)
    r:close()
    assert.has_error(function() r:ReadAt(0, 1) end, "attempt to use a closed reader")
  end)
end)
