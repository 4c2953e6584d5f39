-- The fake GCS, driven from Lua and spoken to with curl.
-- Run: busted spec/fakegcs_spec.lua (Lua 5.4), busted --run=luajit spec/fakegcs_spec.lua
-- or, without the .busted profiles: busted --lua=lua5.4 --cpath='build/lua5.4/?.so' spec/fakegcs_spec.lua
-- Portable Lua (5.1 syntax) so it runs under LuaJIT too.
if not package.cpath:find("build/", 1, true) then
  package.cpath = "build/lua5.4/?.so;" .. package.cpath
end
local core = require "reliablewriter.core"
local testbed = require "reliablewriter.testbed"
local fakegcs = testbed.fakegcs

local seed = tonumber(os.getenv("RW_TEST_SEED") or "") or (os.time() % 1000000 * 1000 + math.floor(os.clock() * 1e6) % 1000)
print(("fakegcs_spec: seed=%d (set RW_TEST_SEED to repeat)"):format(seed))
math.randomseed(seed)

local KiB = 1024
local Q = 256 * KiB

-- Seeded random bytes: the AES-CTR keystream of (seed, counter), never i % 256.
local counter = 0
local function random_bytes(n)
  counter = counter + 1
  local p = assert(io.popen(("head -c %d /dev/zero | openssl enc -aes-256-ctr -nosalt -pbkdf2 -pass pass:%d-%d 2>/dev/null")
    :format(n, seed, counter)))
  local d = p:read("*a")
  p:close()
  assert(#d == n, "openssl gave " .. #d .. " bytes")
  return d
end

-- CRC32C, independent of the server's (ISA-L) one.
local crc32c
if rawget(_G, "bit") or (jit and require("bit")) then
  local bit = rawget(_G, "bit") or require("bit")
  local band, bxor, rshift = bit.band, bit.bxor, bit.rshift
  local tbl = {}
  for i = 0, 255 do
    local c = i
    for _ = 1, 8 do c = band(c, 1) == 1 and bxor(rshift(c, 1), 0x82F63B78) or rshift(c, 1) end
    tbl[i] = c
  end
  crc32c = function(s)
    local c = -1
    for i = 1, #s do c = bxor(tbl[band(bxor(c, s:byte(i)), 0xFF)], rshift(c, 8)) end
    return bxor(c, -1) % 2 ^ 32
  end
else
  crc32c = assert(load([[
    local tbl = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do c = (c & 1 == 1) and ((c >> 1) ~ 0x82F63B78) or (c >> 1) end
      tbl[i] = c
    end
    return function(s)
      local c = 0xFFFFFFFF
      for i = 1, #s do c = tbl[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8) end
      return c ~ 0xFFFFFFFF
    end]]))()
end
local function b64(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  return ((s:gsub(".", function(x)
    local r, b = "", x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end
local function crc_b64(s)
  local c = crc32c(s)
  return b64(string.char(math.floor(c / 2 ^ 24) % 256, math.floor(c / 2 ^ 16) % 256,
    math.floor(c / 2 ^ 8) % 256, c % 256))
end

local function H_raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error to be raised")
  return tostring(err)
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- MD5 in base64, from openssl (independent of the server's).
local function md5_b64(s)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  local p = assert(io.popen("openssl dgst -md5 -binary " .. path .. " | base64"))
  local out = p:read("*a"):gsub("%s+$", "")
  p:close()
  os.remove(path)
  assert(#out == 24, "openssl md5: " .. out)
  return out
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local d = f:read("*a")
  f:close()
  return d
end

-- curl{ method =, url =, headers = {}, data = string, max_time = } ->
-- { status, headers (lower-case keys), body, exit }
local function curl(o)
  local hdr, body = os.tmpname(), os.tmpname()
  local cmd = { "curl -s -o", body, "-D", hdr, "-w '%{http_code}'" }
  if o.method then cmd[#cmd + 1] = "-X " .. o.method end
  for k, v in pairs(o.headers or {}) do cmd[#cmd + 1] = "-H " .. q(k .. ": " .. v) end
  local datafile
  if o.data then
    datafile = os.tmpname()
    local f = assert(io.open(datafile, "wb"))
    f:write(o.data)
    f:close()
    cmd[#cmd + 1] = "--data-binary @" .. datafile
  end
  if o.header_file then cmd[#cmd + 1] = "-H @" .. o.header_file end
  if o.max_time then cmd[#cmd + 1] = "--max-time " .. o.max_time end
  cmd[#cmd + 1] = q(o.url)
  cmd[#cmd + 1] = "; printf ' %d' $?" -- curl's exit code (LuaJIT's close() does not give it)
  local p = io.popen(table.concat(cmd, " "))
  local code, exit = p:read("*a"):match("^(%d*) (%d+)$")
  p:close()
  local r = { status = tonumber(code) or 0, headers = {}, body = slurp(body), exit = tonumber(exit) }
  for line in slurp(hdr):gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then r.headers[k:lower()] = v end
  end
  os.remove(hdr)
  os.remove(body)
  if datafile then os.remove(datafile) end
  return r
end

local function field(body, name)
  return body:match('"' .. name .. '":"([^"]*)"') or body:match('"' .. name .. '":(%-?%d+)')
end

local srv, url

local function start_session(name, headers, body, query)
  local r = curl {
    method = "POST",
    url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=" .. name .. (query or ""),
    headers = headers or { ["Content-Type"] = "application/json" },
    data = body or "{}",
  }
  assert.are.equal(200, r.status, r.body)
  assert.truthy(r.headers.location:find("upload_id=", 1, true))
  return r.headers.location
end

local function put(loc, range, data, headers)
  local h = headers or {}
  h["Content-Range"] = range
  return curl { method = "PUT", url = loc, headers = h, data = data }
end

local function retry_test(instructions)
  local parts = {}
  for method, list in pairs(instructions) do
    local items = {}
    for i, v in ipairs(list) do items[i] = '"' .. v .. '"' end
    parts[#parts + 1] = ('"%s":[%s]'):format(method, table.concat(items, ","))
  end
  local r = curl {
    method = "POST", url = url .. "/retry_test",
    data = '{"instructions":{' .. table.concat(parts, ",") .. "}}",
  }
  assert.are.equal(200, r.status, r.body)
  return field(r.body, "id")
end

describe("fakegcs", function()
  before_each(function()
    srv = assert(fakegcs.start { buckets = { "b" } })
    url = srv:url()
  end)
  after_each(function() srv:stop() end)

  describe("lifecycle", function()
    it("binds 127.0.0.1 on an ephemeral port and stops", function()
      assert.matches("^http://127%.0%.0%.1:%d+$", url)
      assert.are.equal(tonumber(url:match(":(%d+)$")), srv:port())
    end)
    it("rejects unknown options, naming them", function()
      assert.has_error(function() fakegcs.start { prot = 1 } end)
      local ok, err = pcall(fakegcs.start, { prot = 1 })
      assert.is_false(ok)
      assert.matches("prot", tostring(err))
      assert.has_error(function() fakegcs.start { store = "cloud" } end)
      assert.has_error(function() srv:faults { p_404 = 1 } end)
    end)
    it("raises on use after stop; stop twice is fine", function()
      local s = fakegcs.start {}
      s:stop()
      s:stop()
      local ok, err = pcall(s.url, s)
      assert.is_false(ok)
      assert.matches("attempt to use a closed fakegcs", err)
    end)
    -- The port of a stopped server refuses connections (curl exit 7) and its
    -- threads are gone.
    local function assert_stopped(u, threads0)
      local r = curl { url = u .. "/storage/v1/b", max_time = 5 }
      assert.are.equal(7, r.exit, "curl exit " .. tostring(r.exit) .. ", HTTP " .. r.status)
      assert.are.equal(threads0, testbed.probes.thread_count())
    end
    it("stops on __gc: once collected, its port refuses connections", function()
      collectgarbage(); collectgarbage()
      local threads0 = testbed.probes.thread_count()
      local s = fakegcs.start { buckets = { "g" } }
      local u = s:url()
      assert.are.equal(200, curl { url = u .. "/storage/v1/b/g" }.status)
      assert.truthy(testbed.probes.thread_count() > threads0)
      s = nil
      collectgarbage(); collectgarbage()
      assert_stopped(u, threads0)
    end)
    it("stops on __close (also after stop: safe twice)", function()
      collectgarbage(); collectgarbage()
      local threads0 = testbed.probes.thread_count()
      local s = fakegcs.start { buckets = { "g" } }
      local u = s:url()
      assert.are.equal(200, curl { url = u .. "/storage/v1/b/g" }.status)
      getmetatable(s).__close(s)
      assert_stopped(u, threads0)
      assert.matches("attempt to use a closed fakegcs", H_raised(s.port, s))
      assert.are.equal("fakegcs (closed)", tostring(s))
      getmetatable(s).__close(s)
      getmetatable(s).__gc(s)
      s:stop()
    end)
    it("clear_requests empties the log; later requests are logged from one", function()
      curl { url = url .. "/storage/v1/b/b" }
      curl { url = url .. "/storage/v1/b/nope" }
      assert.are.equal(2, #srv:requests())
      srv:clear_requests()
      assert.are.same({}, srv:requests())
      curl { url = url .. "/storage/v1/b/b/o?prefix=z" }
      local log = srv:requests()
      assert.are.equal(1, #log)
      assert.are.equal("GET", log[1].method)
      assert.are.equal("/storage/v1/b/b/o?prefix=z", log[1].path)
      assert.are.equal(200, log[1].status)
    end)
    it("request_log = N keeps the last N requests, in order", function()
      local s = assert(fakegcs.start { buckets = { "b" }, request_log = 5 })
      finally(function() s:stop() end)
      for i = 1, 8 do curl { url = s:url() .. "/storage/v1/b/b?i=" .. i } end
      local log = s:requests()
      assert.are.equal(5, #log)
      for k = 1, 5 do assert.are.equal("/storage/v1/b/b?i=" .. (k + 3), log[k].path) end
      s:clear_requests()
      curl { url = s:url() .. "/storage/v1/b/b?i=9" }
      log = s:requests()
      assert.are.equal(1, #log)
      assert.are.equal("/storage/v1/b/b?i=9", log[1].path)
    end)
    it("rejects a request_log that is not a whole number in 1..10,000,000", function()
      for _, bad in ipairs { 0, -1, 1.5, "many", 10000001 } do
        local ok, err = pcall(fakegcs.start, { request_log = bad })
        assert.is_false(ok, tostring(bad))
        assert.matches("request_log", tostring(err))
      end
    end)
    it("bucket(name) creates a bucket, idempotently", function()
      local media = url .. "/upload/storage/v1/b/nb/o?uploadType=media&name=x"
      assert.are.equal(404, curl { url = url .. "/storage/v1/b/nb" }.status)
      assert.are.equal(404, curl { method = "POST", url = media, data = "abc" }.status)
      srv:bucket("nb")
      local r = curl { url = url .. "/storage/v1/b/nb" }
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("nb", field(r.body, "name"))
      local data = random_bytes(1234)
      assert.are.equal(200, curl { method = "POST", url = media, data = data }.status)
      srv:bucket("nb") -- again: no error, and the bucket keeps its objects
      assert.is_true(srv:object("nb", "x") == data)
      assert.truthy(curl { url = url .. "/storage/v1/b?project=p" }.body:find('"name":"nb"', 1, true))
      assert.has_error(function() srv:bucket("") end)
      assert.has_error(function() srv:bucket() end)
      assert.has_error(function() srv:bucket({}) end)
    end)
    it("returns nil, err when the port is taken", function()
      local s, err = fakegcs.start { port = srv:port() }
      assert.is_nil(s)
      assert.truthy(err)
    end)
  end)

  describe("resumable uploads", function()
    it("stores chunks and the final chunk, checksums included", function()
      local data = random_bytes(2 * Q + 12345)
      local loc = start_session("o1")
      local r = put(loc, ("bytes 0-%d/*"):format(Q - 1), data:sub(1, Q))
      assert.are.equal(308, r.status)
      assert.are.equal("bytes=0-" .. (Q - 1), r.headers.range)
      r = put(loc, ("bytes %d-%d/*"):format(Q, 2 * Q - 1), data:sub(Q + 1, 2 * Q))
      assert.are.equal("bytes=0-" .. (2 * Q - 1), r.headers.range)
      r = put(loc, ("bytes %d-%d/%d"):format(2 * Q, #data - 1, #data), data:sub(2 * Q + 1))
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(tostring(#data), field(r.body, "size"))
      assert.are.equal(crc_b64(data), field(r.body, "crc32c"))
      local got, meta = srv:object("b", "o1")
      assert.are.equal(#data, #got)
      assert.is_true(got == data)
      assert.are.equal(crc_b64(data), meta.crc32c)
      assert.truthy(meta.md5Hash)
    end)
    it("answers 308 without Range when nothing is persisted", function()
      local loc = start_session("o2")
      local r = put(loc, "bytes */*")
      assert.are.equal(308, r.status)
      assert.is_nil(r.headers.range)
    end)
    it("rejects a non-final chunk under 256 KiB", function()
      local loc = start_session("o3")
      local r = put(loc, ("bytes 0-%d/*"):format(Q - 2), random_bytes(Q - 1))
      assert.are.equal(400, r.status)
      assert.matches('"error":{"code":400', r.body)
      assert.is_nil(put(loc, "bytes */*").headers.range)
    end)
    it("persists only the largest 256 KiB multiple of a non-final chunk", function()
      local data = random_bytes(Q + 5000)
      local loc = start_session("o4")
      local r = put(loc, ("bytes 0-%d/*"):format(#data - 1), data)
      assert.are.equal(308, r.status)
      assert.are.equal("bytes=0-" .. (Q - 1), r.headers.range)
      r = put(loc, ("bytes %d-%d/%d"):format(Q, #data - 1, #data), data:sub(Q + 1))
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "o4") == data)
    end)
    it("skips bytes before the persisted offset", function()
      local data = random_bytes(2 * Q + 7)
      local loc = start_session("o5")
      put(loc, ("bytes 0-%d/*"):format(Q - 1), data:sub(1, Q))
      local r = put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data)
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "o5") == data)
    end)
    it("rejects a chunk that starts after the persisted offset", function()
      local loc = start_session("o6")
      local r = put(loc, ("bytes %d-%d/*"):format(Q, 2 * Q - 1), random_bytes(Q))
      assert.are.equal(400, r.status)
      assert.is_nil(put(loc, "bytes */*").headers.range)
      -- a big body is read before the error, so the client sees the status
      r = put(loc, ("bytes %d-%d/*"):format(Q, 33 * Q - 1), random_bytes(32 * Q))
      assert.are.equal(400, r.status)
      assert.are.equal(0, r.exit)
    end)
    it("finalizes with bytes */N once N bytes are persisted, and an empty object", function()
      local data = random_bytes(Q)
      local loc = start_session("o7")
      put(loc, ("bytes 0-%d/*"):format(Q - 1), data)
      local r = put(loc, "bytes */" .. Q)
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "o7") == data)
      loc = start_session("empty")
      r = put(loc, "bytes */0")
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("0", field(r.body, "size"))
      assert.are.equal("", srv:object("b", "empty"))
    end)
    it("answers 308 to bytes */N while fewer bytes are persisted", function()
      local loc = start_session("o8")
      put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q))
      local r = put(loc, "bytes */" .. (2 * Q))
      assert.are.equal(308, r.status)
      assert.are.equal("bytes=0-" .. (Q - 1), r.headers.range)
      assert.are.equal(400, put(loc, "bytes */" .. (Q - 1)).status)
      assert.are.equal(400, put(loc, "bytes 0-9/10", random_bytes(10)).status)
      assert.are.equal("bytes=0-" .. (Q - 1), put(loc, "bytes */*").headers.range)
    end)
    it("rejects malformed Content-Range with a JSON 400", function()
      local loc = start_session("o9")
      for _, bad in ipairs { "bytes 5-1/*", "bytes 0-9/5", "bits 0-9/*", "bytes -1-9/*",
        "bytes 0-9", "bytes */", "bytes a-b/*", "bytes 0-99999999999999999999999/*", "bytes", "bytes 0-9/*x" } do
        local r = put(loc, bad, random_bytes(10))
        assert.are.equal(400, r.status, bad)
        assert.matches('"code":400', r.body)
      end
      assert.is_nil(put(loc, "bytes */*").headers.range)
    end)
    it("rejects a body that differs from the Content-Range", function()
      local loc = start_session("o10")
      local r = put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q + 1))
      assert.are.equal(400, r.status)
      r = put(loc, ("bytes 0-%d/%d"):format(9, 10), random_bytes(9))
      assert.are.equal(400, r.status)
      assert.is_nil(srv:object("b", "o10"))
    end)
    it("honours X-Upload-Content-Length and -Type", function()
      local data = random_bytes(1000)
      local loc = start_session("o11", { ["X-Upload-Content-Length"] = "1000",
        ["X-Upload-Content-Type"] = "text/x-test" }, "")
      assert.are.equal(400, put(loc, "bytes 0-998/999", data:sub(1, 999)).status)
      -- a chunk past the announced length (that would be a fine 308 otherwise)
      assert.are.equal(400, put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q)).status)
      local r = put(loc, "bytes 0-999/1000", data)
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("text/x-test", field(r.body, "contentType"))
    end)
    it("keeps name, contentType and metadata from the initiation body", function()
      local r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable",
        data = '{"name":"fromBody","contentType":"a/b","metadata":{"k":"v"}}' }
      assert.are.equal(200, r.status, r.body)
      r = put(r.headers.location, "bytes 0-2/3", "abc")
      assert.are.equal(200, r.status, r.body)
      local _, meta = srv:object("b", "fromBody")
      assert.are.equal("a/b", meta.contentType)
      assert.are.equal("v", meta.metadata.k)
    end)
    it("checks ifGenerationMatch at finalization (412, object untouched)", function()
      local loc = start_session("g", nil, nil, "&ifGenerationMatch=0")
      assert.are.equal(200, put(loc, "bytes 0-2/3", "one").status)
      local gen = select(2, srv:object("b", "g")).generation
      loc = start_session("g", nil, nil, "&ifGenerationMatch=0")
      local r = put(loc, "bytes 0-2/3", "two")
      assert.are.equal(412, r.status)
      assert.are.equal("one", srv:object("b", "g"))
      loc = start_session("g", nil, nil, "&ifGenerationMatch=" .. gen)
      assert.are.equal(200, put(loc, "bytes 0-4/5", "three").status)
      assert.are.equal("three", srv:object("b", "g"))
      loc = start_session("g", nil, nil, "&ifGenerationNotMatch=0")
      assert.are.equal(200, put(loc, "bytes 0-3/4", "four").status)
    end)
    it("checks ifGenerationMatch/NotMatch against an existing generation (412, object untouched)", function()
      local loc = start_session("gn", nil, nil, "&ifGenerationMatch=0")
      assert.are.equal(200, put(loc, "bytes 0-2/3", "one").status)
      local gen = tonumber(select(2, srv:object("b", "gn")).generation)
      assert.truthy(gen > 0)
      local function num(n) return ("%.0f"):format(n) end -- exact below 2^53, also in LuaJIT
      for _, query in ipairs { "&ifGenerationMatch=" .. num(gen + 1), "&ifGenerationMatch=" .. num(gen - 1),
        "&ifGenerationNotMatch=" .. num(gen) } do
        loc = start_session("gn", nil, nil, query)
        local r = put(loc, "bytes 0-2/3", "two")
        assert.are.equal(412, r.status, query)
        assert.matches("conditionNotMet", r.body)
        assert.are.equal("one", srv:object("b", "gn"), query)
        assert.are.equal(gen, tonumber(select(2, srv:object("b", "gn")).generation))
      end
      -- a generation that matches nothing that exists yet
      loc = start_session("gn-new", nil, nil, "&ifGenerationMatch=" .. num(gen))
      assert.are.equal(412, put(loc, "bytes 0-2/3", "two").status)
      assert.is_nil(srv:object("b", "gn-new"))
      loc = start_session("gn", nil, nil, "&ifGenerationNotMatch=" .. num(gen + 1))
      assert.are.equal(200, put(loc, "bytes 0-2/3", "two").status)
      assert.are.equal("two", srv:object("b", "gn"))
      assert.truthy(tonumber(select(2, srv:object("b", "gn")).generation) > gen)
    end)
    it("checks ifMetagenerationMatch/NotMatch at finalization (412, object untouched)", function()
      assert.are.equal(200, put(start_session("mg"), "bytes 0-2/3", "one").status)
      local _, meta = srv:object("b", "mg")
      assert.are.equal("1", meta.metageneration)
      for _, query in ipairs { "&ifMetagenerationMatch=2", "&ifMetagenerationMatch=0",
        "&ifMetagenerationNotMatch=1" } do
        local loc = start_session("mg", nil, nil, query)
        -- the session starts; the check is at finalization, after the bytes
        assert.are.equal(308, put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q)).status)
        local r = put(loc, ("bytes */%d"):format(Q))
        assert.are.equal(412, r.status, query)
        assert.are.equal("one", srv:object("b", "mg"), query)
        assert.are.equal(412, put(loc, "bytes */*").status) -- a failed session repeats its error
      end
      local data = random_bytes(Q + 3)
      local loc = start_session("mg", nil, nil, "&ifMetagenerationMatch=1&ifGenerationMatch=" .. meta.generation)
      assert.are.equal(200, put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data).status)
      assert.is_true(srv:object("b", "mg") == data)
      loc = start_session("mg", nil, nil, "&ifMetagenerationNotMatch=2")
      assert.are.equal(200, put(loc, "bytes 0-3/4", "four").status)
      assert.are.equal("four", srv:object("b", "mg"))
      -- a value that is not a number is a 400 at the initiation
      local r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=mg&ifMetagenerationMatch=x",
        data = "{}" }
      assert.are.equal(400, r.status)
    end)
    it("verifies an md5Hash in the initiation metadata at finalization", function()
      local data = random_bytes(Q + 777)
      local good = md5_b64(data)
      local bad = md5_b64(data .. "x")
      -- mismatch: the chunks are taken, the final one fails, no object
      local loc = start_session("m1", nil, '{"md5Hash":"' .. bad .. '"}')
      assert.are.equal(308, put(loc, ("bytes 0-%d/*"):format(Q - 1), data:sub(1, Q)).status)
      local r = put(loc, ("bytes %d-%d/%d"):format(Q, #data - 1, #data), data:sub(Q + 1))
      assert.are.equal(400, r.status)
      assert.matches("MD5", r.body)
      assert.is_nil(srv:object("b", "m1"))
      assert.are.equal(400, put(loc, "bytes */*").status)
      assert.is_nil(srv:object("b", "m1"))
      -- match: stored, with that md5Hash
      loc = start_session("m2", nil, '{"md5Hash":"' .. good .. '","crc32c":"' .. crc_b64(data) .. '"}')
      r = put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data)
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(good, field(r.body, "md5Hash"))
      local got, meta = srv:object("b", "m2")
      assert.is_true(got == data)
      assert.are.equal(good, meta.md5Hash)
      -- the right md5 with a wrong crc32c still fails
      loc = start_session("m3", nil, '{"md5Hash":"' .. good .. '","crc32c":"AAAAAA=="}')
      assert.are.equal(400, put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data).status)
      assert.is_nil(srv:object("b", "m3"))
    end)
    it("verifies an initiation md5Hash even where MD5 is off (discard store)", function()
      local s = fakegcs.start { store = "discard", buckets = { "b" } }
      finally(function() s:stop() end)
      local data = random_bytes(5000)
      local function session(name, md5)
        local r = curl { method = "POST", url = s:url() .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=" .. name,
          data = '{"md5Hash":"' .. md5 .. '"}' }
        assert.are.equal(200, r.status, r.body)
        return r.headers.location
      end
      assert.are.equal(400, put(session("d1", md5_b64("other")), "bytes 0-4999/5000", data).status)
      assert.is_nil(s:object("b", "d1"))
      local r = put(session("d2", md5_b64(data)), "bytes 0-4999/5000", data)
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(md5_b64(data), select(2, s:object("b", "d2")).md5Hash)
      -- without one, discard mode computes no MD5 (as before)
      r = curl { method = "POST", url = s:url() .. "/upload/storage/v1/b/b/o?uploadType=media&name=d3", data = data }
      assert.are.equal(200, r.status)
      assert.is_nil(select(2, s:object("b", "d3")).md5Hash)
    end)
    it("verifies X-Goog-Hash and metadata checksums; a mismatch makes no object", function()
      local data = random_bytes(5000)
      local loc = start_session("h1")
      local r = put(loc, "bytes 0-4999/5000", data, { ["X-Goog-Hash"] = "crc32c=AAAAAA==" })
      assert.are.equal(400, r.status)
      assert.is_nil(srv:object("b", "h1"))
      loc = start_session("h2")
      r = put(loc, "bytes 0-4999/5000", data,
        { ["X-Goog-Hash"] = "crc32c=" .. crc_b64(data) .. ",md5=AAAAAAAAAAAAAAAAAAAAAA==" })
      assert.are.equal(400, r.status)
      assert.is_nil(srv:object("b", "h2"))
      loc = start_session("h3", nil, '{"crc32c":"AAAAAA=="}')
      assert.are.equal(400, put(loc, "bytes 0-4999/5000", data).status)
      assert.is_nil(srv:object("b", "h3"))
      loc = start_session("h4")
      r = put(loc, "bytes 0-4999/5000", data, { ["X-Goog-Hash"] = "crc32c=" .. crc_b64(data) })
      assert.are.equal(200, r.status, r.body)
    end)
    it("cancels with DELETE (499), then 404", function()
      local loc = start_session("c")
      put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q))
      assert.are.equal(499, curl { method = "DELETE", url = loc }.status)
      assert.are.equal(404, put(loc, "bytes */*").status)
      assert.are.equal(404, curl { method = "DELETE", url = loc }.status)
      assert.is_nil(srv:object("b", "c"))
    end)
    it("answers 200 with the metadata on a finished session", function()
      local loc = start_session("f")
      put(loc, "bytes 0-2/3", "abc")
      local r = put(loc, "bytes */*")
      assert.are.equal(200, r.status)
      assert.are.equal("3", field(r.body, "size"))
      r = put(loc, "bytes 0-2/3", "xyz")
      assert.are.equal(200, r.status)
      assert.are.equal("abc", srv:object("b", "f"))
    end)
    it("honours X-GUploader-No-308", function()
      local loc = start_session("n")
      local r = put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q), { ["X-GUploader-No-308"] = "yes" })
      assert.are.equal(200, r.status)
      assert.are.equal("308", r.headers["x-http-status-code-override"])
      assert.are.equal("bytes=0-" .. (Q - 1), r.headers.range)
    end)
    it("logs method, path, Content-Range and status", function()
      local loc = start_session("l")
      put(loc, "bytes */*")
      local log = srv:requests()
      assert.are.equal(2, #log)
      assert.are.equal("POST", log[1].method)
      assert.are.equal(200, log[1].status)
      assert.are.equal("PUT", log[2].method)
      assert.are.equal("bytes */*", log[2].content_range)
      assert.are.equal(308, log[2].status)
      assert.matches("upload_id=", log[2].path)
    end)
  end)

  describe("bad input", function()
    it("rejects fault instructions whose numbers overflow or are out of range", function()
      for _, bad in ipairs {
        "return-99999999999", "return-99", "return-600", "return-+503", "return- 503",
        "return-503-after-99999999999999999999K", "return-503-after--1K", "return-503-after-1.5K",
        "return-broken-stream-final-chunk-after--1B", "return-broken-stream-final-chunk-after-1e3B",
        "return-broken-stream-after-18446744073709551615K",
        "stall-for-1e300s-after-0K", "stall-for-infs-after-0K", "stall-for-nans-after-0K",
        "stall-for-3601s-after-0K", "stall-for--1s-after-0K", "stall-for-1.s-after-0K",
      } do
        local r = curl { method = "POST", url = url .. "/retry_test",
                         data = '{"instructions":{"storage.objects.insert":["' .. bad .. '"]}}' }
        assert.are.equal(400, r.status, bad)
        assert.matches("unknown instruction", r.body, 1, true)
      end
      for _, good in ipairs { "return-503", "stall-for-0.25s-after-512K", "stall-for-3600s-after-0K",
                              "return-broken-stream-final-chunk-after-0B", "return-408-after-0K" } do
        local id = retry_test { ["storage.objects.insert"] = { good } }
        if good ~= "return-503" then -- the initiation keeps it, written as it was
          start_session("keep", { ["x-retry-test-id"] = id, ["Content-Type"] = "application/json" })
          assert.matches(good, curl { url = url .. "/retry_test/" .. id }.body, 1, true)
        end
      end
    end)
    it("rejects Content-Range offsets at or past 2^63 and a negative X-Upload-Content-Length", function()
      local loc = start_session("big")
      assert.are.equal(308, put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q)).status)
      for _, bad in ipairs { ("bytes %d-18446744073709551615/*"):format(Q),
                             ("bytes %d-9223372036854775807/*"):format(Q),
                             "bytes 0-18446744073709551615/18446744073709551616" } do
        local r = put(loc, bad)
        assert.are.equal(400, r.status, bad)
        assert.matches("malformed Content-Range", r.body, 1, true)
      end
      for _, bad in ipairs { "-1", "-9223372036854775808", "1e3", "9223372036854775808" } do
        local r = curl { method = "POST", data = "{}",
                         url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=neg",
                         headers = { ["X-Upload-Content-Length"] = bad } }
        assert.are.equal(400, r.status, bad)
        assert.matches("X-Upload-Content-Length", r.body, 1, true)
      end
    end)
    it("sessions that declare 1 TiB but send nothing do not take the address space", function()
      local function vm_kib()
        return tonumber(slurp("/proc/self/status"):match("VmSize:%s*(%d+)"))
      end
      local before = vm_kib()
      for i = 1, 48 do
        start_session("huge" .. i, { ["X-Upload-Content-Length"] = "1099511627775" })
      end
      local grew = vm_kib() - before
      assert.is_true(grew < 16 * 1024 * 1024, ("address space grew %d KiB"):format(grew))
    end)
    it("keeps at most 1000 retry tests; deleting one makes room", function()
      local cmd = { "curl -s -X POST -d '{\"instructions\":{}}' -w '%{http_code}\\n'" }
      for _ = 1, 1001 do cmd[#cmd + 1] = "-o /dev/null " .. url .. "/retry_test" end
      local p = io.popen(table.concat(cmd, " "))
      local codes = p:read("*a")
      p:close()
      local _, ok = codes:gsub("200", "")
      assert.are.equal(1000, ok)
      assert.matches("400\n$", codes)
      local r = curl { method = "POST", url = url .. "/retry_test", data = '{"instructions":{}}' }
      assert.are.equal(400, r.status)
      assert.matches("already 1000 retry tests", r.body, 1, true)
      local id = curl { url = url .. "/retry_tests" }.body:match('"id":"([^"]+)"')
      assert.are.equal(200, curl { method = "DELETE", url = url .. "/retry_test/" .. id }.status)
      assert.are.equal(200, curl { method = "POST", url = url .. "/retry_test", data = '{"instructions":{}}' }.status)
    end)
    it("unknown upload ids, missing names, wrong methods, unknown endpoints", function()
      local r = put(url .. "/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=nope", "bytes */*")
      assert.are.equal(404, r.status)
      assert.matches('"code":404', r.body)
      r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable", data = "{}" }
      assert.are.equal(400, r.status)
      r = curl { method = "PATCH", url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=x" }
      assert.are.equal(405, r.status)
      r = curl { method = "POST", url = url .. "/upload/storage/v1/b/nob/o?uploadType=resumable&name=x", data = "{}" }
      assert.are.equal(404, r.status)
      r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=x", data = "{nojson" }
      assert.are.equal(400, r.status)
      r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=weird&name=x", data = "" }
      assert.are.equal(400, r.status)
      r = curl { url = url .. "/nothing/here" }
      assert.are.equal(404, r.status)
      assert.matches('"errors":%[', r.body)
    end)
    it("survives oversized headers and keeps serving", function()
      local hf = os.tmpname()
      local f = assert(io.open(hf, "w"))
      f:write("X-Big: ", string.rep("a", 2 * 1024 * 1024), "\n")
      f:close()
      local r = curl { url = url .. "/storage/v1/b", header_file = hf }
      os.remove(hf)
      assert.is_true(r.status >= 400 or r.exit ~= 0)
      assert.are.equal(200, curl { url = url .. "/storage/v1/b" }.status)
    end)
  end)

  describe("simple uploads and objects", function()
    it("media upload, metadata, download with Range, delete", function()
      local data = random_bytes(100000)
      local r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=media&name=dir%2Fm",
        data = data, headers = { ["Content-Type"] = "application/octet-stream" } }
      assert.are.equal(200, r.status, r.body)
      r = curl { url = url .. "/storage/v1/b/b/o/dir%2Fm" }
      assert.are.equal("100000", field(r.body, "size"))
      r = curl { url = url .. "/storage/v1/b/b/o/dir%2Fm?alt=media" }
      assert.is_true(r.body == data)
      assert.matches("crc32c=" .. crc_b64(data):gsub("%p", "%%%0"), r.headers["x-goog-hash"])
      r = curl { url = url .. "/storage/v1/b/b/o/dir%2Fm?alt=media", headers = { Range = "bytes=10-19" } }
      assert.are.equal(206, r.status)
      assert.are.equal(data:sub(11, 20), r.body)
      assert.are.equal("bytes 10-19/100000", r.headers["content-range"])
      r = curl { url = url .. "/storage/v1/b/b/o/dir%2Fm?alt=media", headers = { Range = "bytes=-5" } }
      assert.are.equal(data:sub(-5), r.body)
      r = curl { url = url .. "/storage/v1/b/b/o/dir%2Fm?alt=media", headers = { Range = "bytes=100000-" } }
      assert.are.equal(416, r.status)
      assert.are.equal(204, curl { method = "DELETE", url = url .. "/storage/v1/b/b/o/dir%2Fm" }.status)
      assert.are.equal(404, curl { url = url .. "/storage/v1/b/b/o/dir%2Fm" }.status)
      assert.are.equal(404, curl { method = "DELETE", url = url .. "/storage/v1/b/b/o/dir%2Fm" }.status)
    end)
    it("multipart upload", function()
      local data = random_bytes(3000)
      local body = "--BND\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n" ..
        '{"name":"mp","contentType":"x/y"}' .. "\r\n--BND\r\nContent-Type: x/y\r\n\r\n" ..
        data .. "\r\n--BND--\r\n"
      local r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=multipart",
        data = body, headers = { ["Content-Type"] = "multipart/related; boundary=BND" } }
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "mp") == data)
      r = curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=multipart",
        data = "garbage", headers = { ["Content-Type"] = "multipart/related; boundary=BND" } }
      assert.are.equal(400, r.status)
    end)
    it("lists with prefix and delimiter, composes, buckets", function()
      local parts = {}
      for i, name in ipairs { "a/1", "a/2", "b/3" } do
        parts[i] = random_bytes(1000 + i)
        curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=media&name=" .. name, data = parts[i] }
      end
      local r = curl { url = url .. "/storage/v1/b/b/o?prefix=a/" }
      assert.truthy(r.body:find('"name":"a/1"', 1, true))
      assert.truthy(r.body:find('"name":"a/2"', 1, true))
      assert.falsy(r.body:find('"name":"b/3"', 1, true))
      r = curl { url = url .. "/storage/v1/b/b/o?delimiter=/" }
      assert.truthy(r.body:find('"prefixes":["a/","b/"]', 1, true))
      r = curl { method = "POST", url = url .. "/storage/v1/b/b/o/whole/compose",
        data = '{"sourceObjects":[{"name":"a/1"},{"name":"a/2"},{"name":"b/3"}],"destination":{"contentType":"c/d"}}' }
      assert.are.equal(200, r.status, r.body)
      local whole = parts[1] .. parts[2] .. parts[3]
      assert.are.equal(crc_b64(whole), field(r.body, "crc32c"))
      assert.is_true(srv:object("b", "whole") == whole)
      r = curl { method = "POST", url = url .. "/storage/v1/b/b/o/x/compose", data = '{"sourceObjects":[{"name":"zz"}]}' }
      assert.are.equal(404, r.status)
      r = curl { method = "POST", url = url .. "/storage/v1/b?project=p", data = '{"name":"nb"}' }
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(409, curl { method = "POST", url = url .. "/storage/v1/b?project=p", data = '{"name":"nb"}' }.status)
      assert.are.equal(200, curl { url = url .. "/storage/v1/b/nb" }.status)
      assert.are.equal(404, curl { url = url .. "/storage/v1/b/zz" }.status)
      assert.truthy(curl { url = url .. "/storage/v1/b?project=p" }.body:find('"name":"nb"', 1, true))
    end)
  end)

  describe("stores", function()
    it("discard keeps sizes and checksums only", function()
      local s = fakegcs.start { store = "discard", buckets = { "b" } }
      finally(function() s:stop() end)
      local data = random_bytes(Q + 99)
      local r = curl { method = "POST", url = s:url() .. "/upload/storage/v1/b/b/o?uploadType=media&name=d", data = data }
      assert.are.equal(200, r.status)
      local got, meta = s:object("b", "d")
      assert.is_false(got)
      assert.are.equal(tostring(#data), meta.size)
      assert.are.equal(crc_b64(data), meta.crc32c)
      assert.are.equal(501, curl { url = s:url() .. "/storage/v1/b/b/o/d?alt=media" }.status)
    end)
    it("dir keeps bytes in files", function()
      local dir = os.tmpname()
      os.remove(dir)
      local s = fakegcs.start { store = { dir = dir }, buckets = { "b" } }
      finally(function() s:stop() end)
      local data = random_bytes(Q * 2 + 3)
      curl { method = "POST", url = s:url() .. "/upload/storage/v1/b/b/o?uploadType=media&name=d", data = data }
      assert.is_true(s:object("b", "d") == data)
      s:stop()
      os.remove(dir)
    end)
  end)

  describe("faults (retry_test)", function()
    it("creates, reads and deletes retry tests", function()
      local id = retry_test { ["storage.objects.insert"] = { "return-503" } }
      local r = curl { url = url .. "/retry_test/" .. id }
      assert.truthy(r.body:find('"completed":false', 1, true))
      assert.are.equal(400, curl { method = "POST", url = url .. "/retry_test",
        data = '{"instructions":{"storage.objects.insert":["return-banana"]}}' }.status)
      assert.are.equal(200, curl { method = "DELETE", url = url .. "/retry_test/" .. id }.status)
      assert.are.equal(404, curl { url = url .. "/retry_test/" .. id }.status)
    end)
    it("[reset-connection, 503] on the initiation, then it works", function()
      local id = retry_test { ["storage.objects.insert"] = { "return-reset-connection", "return-503" } }
      local h = { ["x-retry-test-id"] = id }
      local uri = url .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=r"
      local r = curl { method = "POST", url = uri, headers = h, data = "{}" }
      assert.are.equal(56, r.exit) -- connection reset by peer
      r = curl { method = "POST", url = uri, headers = h, data = "{}" }
      assert.are.equal(503, r.status)
      r = curl { method = "POST", url = uri, headers = h, data = "{}" }
      assert.are.equal(200, r.status)
      assert.truthy(curl { url = url .. "/retry_test/" .. id }.body:find('"completed":true', 1, true))
      local log = srv:requests()
      assert.are.equal(0, log[2].status)
    end)
    it("return-408, -401 and -400 before anything is persisted", function()
      local loc = start_session("s")
      local id = retry_test { ["storage.objects.insert"] = { "return-408", "return-401", "return-400" } }
      local h = { ["x-retry-test-id"] = id }
      for _, want in ipairs { 408, 401, 400 } do
        local r = put(loc, ("bytes 0-%d/*"):format(Q - 1), random_bytes(Q), { ["x-retry-test-id"] = id })
        assert.are.equal(want, r.status)
      end
      assert.is_nil(put(loc, "bytes */*", nil, h).headers.range)
    end)
    it("[503-after-256K] persists exactly 256 KiB of a bigger chunk", function()
      local data = random_bytes(4 * Q)
      local loc = start_session("a")
      local id = retry_test { ["storage.objects.insert"] = { "return-503-after-256K" } }
      local h = { ["x-retry-test-id"] = id }
      local r = put(loc, ("bytes 0-%d/*"):format(2 * Q - 1), data:sub(1, 2 * Q), h)
      assert.are.equal(503, r.status)
      r = put(loc, "bytes */*", nil, h)
      assert.are.equal("bytes=0-" .. (Q - 1), r.headers.range)
      r = put(loc, ("bytes %d-%d/%d"):format(Q, #data - 1, #data), data:sub(Q + 1), h)
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "a") == data)
    end)
    it("[503-after-8192K, 408] with 8 MiB chunks (initiation keeps it for later)", function()
      local data = random_bytes(8 * 1024 * KiB + 5)
      local id = retry_test { ["storage.objects.insert"] = { "return-503-after-8192K", "return-408" } }
      local h = { ["x-retry-test-id"] = id }
      local loc = start_session("big", { ["x-retry-test-id"] = id })
      local r = put(loc, ("bytes 0-%d/*"):format(8 * 1024 * KiB - 1), data:sub(1, 8 * 1024 * KiB), h)
      assert.are.equal(503, r.status)
      assert.are.equal(408, put(loc, "bytes */*", nil, h).status)
      r = put(loc, "bytes */*", nil, h)
      assert.are.equal("bytes=0-" .. (8 * 1024 * KiB - 1), r.headers.range)
      r = put(loc, ("bytes %d-%d/%d"):format(8 * 1024 * KiB, #data - 1, #data), data:sub(8 * 1024 * KiB + 1), h)
      assert.are.equal(200, r.status)
      assert.is_true(srv:object("b", "big") == data)
    end)
    it("return-503-after-100K persists exactly 100 KiB", function()
      local data = random_bytes(Q)
      local id = retry_test { ["storage.objects.insert"] = { "return-503-after-100K" } }
      local loc = start_session("e")
      local r = put(loc, ("bytes 0-%d/%d"):format(Q - 1, Q), data, { ["x-retry-test-id"] = id })
      assert.are.equal(503, r.status)
      assert.are.equal("bytes=0-" .. (100 * KiB - 1), put(loc, "bytes */*").headers.range)
      r = put(loc, ("bytes %d-%d/%d"):format(100 * KiB, Q - 1, Q), data:sub(100 * KiB + 1))
      assert.are.equal(200, r.status, r.body)
      assert.is_true(srv:object("b", "e") == data)
    end)
    it("return-broken-stream persists, then cuts the reply", function()
      local data = random_bytes(Q + 10)
      local id = retry_test { ["storage.objects.insert"] = { "return-broken-stream" } }
      local loc = start_session("bs")
      local r = put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data, { ["x-retry-test-id"] = id })
      assert.are_not.equal(0, r.exit)
      assert.are.equal(0, r.status)
      r = put(loc, "bytes */*")
      assert.are.equal(200, r.status)
      assert.is_true(srv:object("b", "bs") == data)
    end)
    it("stall-for-1s-after-256K pauses the request", function()
      local id = retry_test { ["storage.objects.insert"] = { "stall-for-1s-after-256K" } }
      local loc = start_session("st")
      local t0 = os.time()
      local c0 = io.popen("date +%s.%N"):read("*a")
      local r = put(loc, ("bytes 0-%d/*"):format(2 * Q - 1), random_bytes(2 * Q), { ["x-retry-test-id"] = id })
      local c1 = io.popen("date +%s.%N"):read("*a")
      assert.are.equal(308, r.status)
      assert.is_true(tonumber(c1) - tonumber(c0) >= 0.95, "stalled " .. (tonumber(c1) - tonumber(c0)))
      assert.is_true(os.time() - t0 <= 5)
    end)
    -- storage-testbench (testbench/common.py, __get_limit_response_fn): once the
    -- upload is complete, the reply is a 200 whose JSON body is its first Y bytes.
    it("return-broken-stream-final-chunk-after-100B finalizes, then cuts the reply to 100 bytes", function()
      local data = random_bytes(Q + 1000)
      local id = retry_test { ["storage.objects.insert"] = { "return-broken-stream-final-chunk-after-100B" } }
      local h = { ["x-retry-test-id"] = id }
      local loc = start_session("bf", h)
      assert.are.equal(308, put(loc, ("bytes 0-%d/*"):format(Q - 1), data:sub(1, Q), h).status)
      assert.are.equal(308, put(loc, "bytes */*", nil, h).status) -- not final yet: kept
      local r = put(loc, ("bytes %d-%d/%d"):format(Q, #data - 1, #data), data:sub(Q + 1), h)
      assert.are.equal(0, r.exit)
      assert.are.equal(200, r.status)
      assert.matches("^application/json", r.headers["content-type"])
      assert.are.equal(100, #r.body)
      assert.are.equal("100", r.headers["content-length"])
      assert.is_nil(r.body:match('"crc32c"'))
      assert.is_true(srv:object("b", "bf") == data)
      -- the session is final: status queries answer 200 with the whole object
      for _, q in ipairs { "bytes */*", "bytes */" .. #data } do
        r = put(loc, q, nil, h)
        assert.are.equal(200, r.status, q)
        assert.are.equal(tostring(#data), field(r.body, "size"), q)
        assert.are.equal(crc_b64(data), field(r.body, "crc32c"), q)
      end
      assert.matches('"completed":true', curl { url = url .. "/retry_test/" .. id }.body)
    end)
    it("return-broken-stream-final-chunk-after-0B gives an empty 200; a big Y the whole reply", function()
      for _, y in ipairs { 0, 100000 } do
        local data = random_bytes(1000)
        local id = retry_test { ["storage.objects.insert"] = { ("return-broken-stream-final-chunk-after-%dB"):format(y) } }
        local loc = start_session("b" .. y)
        local r = put(loc, ("bytes 0-%d/%d"):format(#data - 1, #data), data, { ["x-retry-test-id"] = id })
        assert.are.equal(200, r.status)
        if y == 0 then assert.are.equal("", r.body)
        else assert.are.equal(tostring(#data), field(r.body, "size")) end
        assert.is_true(srv:object("b", "b" .. y) == data)
      end
    end)
    it("a status query on a finalized session answers 200 with the object, whatever finalized it", function()
      local ways = {
        { "final chunk" },
        { "return-broken-stream", "return-broken-stream" },
        { "final-chunk-after-10B", "return-broken-stream-final-chunk-after-10B" },
        { "bytes */N", nil, "query" },
      }
      for i, w in ipairs(ways) do
        local name, data = "fin" .. i, random_bytes(Q)
        local h = {}
        if w[2] then h["x-retry-test-id"] = retry_test { ["storage.objects.insert"] = { w[2] } } end
        local loc = start_session(name)
        if w[3] == "query" then
          assert.are.equal(308, put(loc, ("bytes 0-%d/*"):format(Q - 1), data).status)
          assert.are.equal(200, put(loc, "bytes */" .. Q).status, w[1])
        else
          put(loc, ("bytes 0-%d/%d"):format(Q - 1, Q), data, h)
        end
        for _, q in ipairs { "bytes */*", "bytes */" .. Q } do
          local r = put(loc, q)
          assert.are.equal(200, r.status, w[1] .. ": " .. q)
          assert.are.equal(tostring(Q), field(r.body, "size"), w[1])
          assert.are.equal(crc_b64(data), field(r.body, "crc32c"), w[1])
          assert.are.equal(name, field(r.body, "name"), w[1])
        end
        assert.is_true(srv:object("b", name) == data, w[1])
      end
    end)
    it("return-broken-stream-after-256K on a download", function()
      local data = random_bytes(2 * Q)
      curl { method = "POST", url = url .. "/upload/storage/v1/b/b/o?uploadType=media&name=dl", data = data }
      local id = retry_test { ["storage.objects.get"] = { "return-broken-stream-after-256K" } }
      local r = curl { url = url .. "/storage/v1/b/b/o/dl?alt=media", headers = { ["x-retry-test-id"] = id } }
      assert.are.equal(18, r.exit) -- partial file
      assert.are.equal(Q, #r.body)
      assert.is_true(r.body == data:sub(1, Q))
      assert.is_true(curl { url = url .. "/storage/v1/b/b/o/dl?alt=media" }.body == data)
    end)
    it("the session DELETE is storage.objects.delete", function()
      local id = retry_test { ["storage.objects.delete"] = { "return-503" } }
      local loc = start_session("del")
      assert.are.equal(503, curl { method = "DELETE", url = loc, headers = { ["x-retry-test-id"] = id } }.status)
      assert.are.equal(499, curl { method = "DELETE", url = loc, headers = { ["x-retry-test-id"] = id } }.status)
    end)
  end)

  describe("random faults", function()
    local function statuses(s, n)
      local out = {}
      for i = 1, n do
        local r = curl { method = "POST", url = s:url() .. "/upload/storage/v1/b/b/o?uploadType=resumable&name=x" .. i, data = "{}" }
        out[i] = r.status
      end
      return table.concat(out, ",")
    end
    it("are seeded: the same seed gives the same faults", function()
      srv:faults { seed = 7, p_503 = 0.3, p_408 = 0.2 }
      local a = statuses(srv, 30)
      srv:faults { seed = 7, p_503 = 0.3, p_408 = 0.2 }
      local b = statuses(srv, 30)
      assert.are.equal(a, b)
      assert.matches("503", a)
      assert.matches("200", a)
      srv:faults()
      assert.are.equal(string.rep("200,", 4) .. "200", statuses(srv, 5))
    end)
    it("p_partial persists a 256 KiB-aligned prefix and answers 503", function()
      srv:faults { seed = 3, p_partial = 1 }
      local loc = start_session("p", nil, nil)
      srv:faults()
      loc = start_session("p")
      srv:faults { seed = 3, p_partial = 1 }
      local r = put(loc, ("bytes 0-%d/*"):format(32 * Q - 1), random_bytes(32 * Q))
      srv:faults()
      assert.are.equal(503, r.status)
      local range = put(loc, "bytes */*").headers.range
      local n = range and tonumber(range:match("%-(%d+)")) + 1 or 0
      assert.are.equal(0, n % Q)
    end)
  end)
end)
