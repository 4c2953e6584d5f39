-- rw.proxy.start: the Lua surface of the proxy server (csrc/lua/l_proxy.c).
-- The protocol itself (uploads, duplicates, hostile frames) is tested in C:
-- tests/c/test_proxy_server.c drives it with a client made of the codec.
local H = require "helpers"
local rw = H.rw()
local testbed = require "reliablewriter.testbed"

local SECRET = string.rep("k", 32)

describe("proxy server", function()
  local gcs
  before_each(function() gcs = assert(testbed.fakegcs.start { buckets = { "b" } }) end)
  after_each(function() gcs:stop() end)

  local function start(extra)
    local o = { upstream = gcs:url(), secret = SECRET }
    for k, v in pairs(extra or {}) do o[k] = v end
    return rw.proxy.start(o)
  end

  it("starts on an ephemeral port, reports stats, stops twice", function()
    local p = assert(start())
    local host, port = p:addr():match("^(127%.0%.0%.1):(%d+)$")
    assert.equal("127.0.0.1", host)
    assert.is_true(tonumber(port) > 0)
    assert.matches("ProxyServer %(127", tostring(p))
    local st = p:stats()
    for _, k in ipairs { "connections", "accepted", "authed", "auth_failed", "requests", "duplicates",
                         "errors", "rate_limited", "bytes_in", "sessions", "held", "table_entries" } do
      assert.equal("number", type(st[k]), k)
    end
    assert.equal(0, st.connections)
    p:stop()
    p:stop()
    assert.matches("closed proxy server", H.raised(p.addr, p))
    assert.matches("closed proxy server", H.raised(p.stats, p))
  end)

  it("closes with <close> semantics through __close and __gc", function()
    local p = assert(start { secrets = { k2 = string.rep("z", 40) } })
    local mt = getmetatable(p)
    assert.equal("function", type(mt.__close))
    mt.__close(p) -- stops it; __gc later finds it stopped
    assert.matches("closed proxy server", H.raised(p.addr, p))
    local q = assert(start())
    q = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
  end)

  it("drops a connection that does not authenticate within auth_timeout", function()
    local p = assert(start { auth_timeout = 0.2 })
    local port = p:addr():match(":(%d+)$")
    local lines = H.capture_log(function()
      -- a raw TCP connection that says nothing (bash's /dev/tcp)
      local f = io.popen("bash -c 'exec 3<>/dev/tcp/127.0.0.1/" .. port .. "; sleep 0.6; cat <&3 | wc -c'")
      local got = tonumber(f:read("a"))
      f:close()
      assert.is_true(got > 48, "an ERROR frame was sent before closing: " .. tostring(got))
      local st = p:stats()
      assert.equal(1, st.accepted)
      assert.equal(1, st.auth_failed)
      assert.equal(0, st.connections)
    end)
    assert.is_true(H.has_line(lines, "proto.auth_timeout"))
    p:stop()
  end)

  it("returns nil, err when the port is taken", function()
    local p = assert(start())
    local q, err = start { listen = p:addr() }
    assert.is_nil(q)
    assert.equal("io.error", err.code)
    assert.matches("listen", err.message)
    p:stop()
  end)

  it("refuses bad options naming the option and the rule", function()
    local cases = {
      { { upstream = "http://x", secret = SECRET, bogus = 1 }, "unknown option 'bogus'" },
      { { secret = SECRET }, "'upstream' is required" },
      { { upstream = "http://x" }, "'secret' or 'secrets' is required" },
      { { upstream = "http://x", secret = "short" }, "'secret' must be a string of 32 or more bytes" },
      { { upstream = "ftp://x", secret = SECRET }, "upstream: an http:// or https:// URL" },
      { { upstream = "http://x", secret = SECRET, listen = "nohost" }, "listen \"nohost\"" },
      { { upstream = "http://x", secret = SECRET, listen = 80 }, "'listen' must be a string" },
      { { upstream = "http://x", secret = SECRET, max_frame = 10 }, "max_frame" },
      { { upstream = "http://x", secret = SECRET, max_connections = 0 }, "max_connections" },
      { { upstream = "http://x", secret = SECRET, session_cache = 1000000 }, "session_cache" },
      { { upstream = "http://x", secret = SECRET, rate_requests = -1 }, "rate_requests" },
      { { upstream = "http://x", secret = SECRET, max_ahead = 1048576 }, "max_ahead: 0 (16 x session_cache) or session_cache" },
      { { upstream = "http://x", secret = SECRET, max_ahead = -1 }, "max_ahead" },
      { { upstream = "http://x", secrets = { k = 5 } }, "'secrets' must map key_id strings" },
      { { upstream = "http://x", secret = SECRET, key_id = string.rep("i", 65) }, "key_id: at most 64" },
    }
    for _, c in ipairs(cases) do
      local msg = H.raised(rw.proxy.start, c[1])
      assert.is_truthy(msg:find(c[2], 1, true), msg .. " does not name " .. c[2])
    end
    assert.matches("table expected", H.raised(rw.proxy.start, "x"))
  end)
end)
