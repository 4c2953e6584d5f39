-- Credentials (issue 11): every source against the fake GCS's token endpoint,
-- metadata server and required-token mode, on 127.0.0.1 only. Keys and the
-- TLS CA are made with the openssl CLI at test time. Anything that runs the
-- ADC chain runs in a child process with GCE_METADATA_HOST set to the fake or
-- to a closed loopback port: nothing contacts 169.254.169.254.
local H = require "helpers"
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"

local KiB, MiB = 1024, 1024 * 1024
local bg = rw.context.background()

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'"))

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == true or ok == 0, "failed: " .. cmd)
end
local function read(p) local f = assert(io.open(p, "rb")); local s = f:read("a"); f:close(); return s end
local function write(p, s) local f = assert(io.open(p, "wb")); f:write(s); f:close() end

-- An RSA key pair for the service account, another the fake does not know.
sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out '%s/key.pem'"):format(dir))
sh(("openssl pkey -in '%s/key.pem' -pubout -out '%s/pub.pem'"):format(dir, dir))
sh(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out '%s/other.pem'"):format(dir))
local PRIV, PUB = read(dir .. "/key.pem"), read(dir .. "/pub.pem")
local KEY_LINE = PRIV:match("\n([^\n]+)\n[^\n]+\n[^\n]+\n") -- a line of the key's body

local function json_str(s) return '"' .. s:gsub('[%c"\\]', function(c) return ("\\u%04x"):format(c:byte()) end) .. '"' end

local nfile = 0
local function sa_file(token_uri, pem, extra)
  nfile = nfile + 1
  local p = ("%s/sa-%d.json"):format(dir, nfile)
  write(p, ('{"type":"service_account","client_email":"w@test.iam.gserviceaccount.com",' ..
    '"private_key_id":"k1","token_uri":%s%s%s}'):format(json_str(token_uri),
    pem and (',"private_key":' .. json_str(pem)) or "", extra or ""))
  return p
end

local function start(opts)
  opts = opts or {}
  opts.buckets = { "b" }
  opts.auth = opts.auth or { public_key = PUB }
  return assert(testbed.fakegcs.start(opts))
end

local function check_object(srv, name, data)
  local got = srv:object("b", name)
  assert.equal(#data, got and #got or -1, "size of " .. name)
  assert.is_true(got == data, "bytes of " .. name .. " (seed " .. H.seed .. ")")
end

local function no_secret(text, secrets)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), "a secret leaked into: " .. text:sub(1, 400))
  end
end

local function upload(sink, data, pieces, pause)
  local w = assert(rw.new(bg, { sink = sink, retry = { total_wait = 20 } }))
  local step = math.ceil(#data / (pieces or 1))
  for off = 0, #data - 1, step do
    assert(w:WriteAt(off, data:sub(off + 1, math.min(#data, off + step))))
    if pause then bg:wait(pause) end
  end
  local obj, err = w:Complete()
  for k, v in pairs(w:stats()) do no_secret(tostring(k) .. "=" .. tostring(v), { "ya29.fake-", KEY_LINE }) end
  w:close()
  return obj, err
end

-- Runs a child Lua with env vars set; returns its output.
local function child(env, script)
  nfile = nfile + 1
  local p = ("%s/child-%d.lua"):format(dir, nfile)
  write(p, script)
  local lua = jit and "luajit" or "lua5.4"
  local cpath = jit and "build/luajit/?.so" or "build/lua5.4/?.so"
  local f = io.popen(("cd '%s' && env %s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s;;' %s '%s' 2>&1")
    :format(os.getenv("PWD") or ".", env, cpath, lua, p))
  local out = f:read("a")
  f:close()
  return out
end

describe("auth", function()
  it("uploads with a service-account key through the fake's token endpoint", function()
    local srv = start()
    local data = H.random_bytes(3 * MiB + 17)
    local sink = rw.gcs { bucket = "b", object = "sa", endpoint = srv:url(),
                          credentials_file = sa_file(srv:url() .. "/token", PRIV) }
    assert(upload(sink, data, 3))
    check_object(srv, "sa", data)
    assert.equal(1, srv:auth_stats().token_requests)
    assert.equal(0, srv:auth_stats().unauthorized)
    no_secret(tostring(sink), { KEY_LINE })
    srv:stop()
  end)

  it("a 12 MiB upload outlives a 3 s token: refreshed before it expires, no 401, no failure", function()
    local srv = start { auth = { public_key = PUB, token_lifetime = 3 } }
    local data = H.random_bytes(12 * MiB)
    local sink = rw.gcs { bucket = "b", object = "long", endpoint = srv:url(),
                          credentials_file = sa_file(srv:url() .. "/token", PRIV) }
    local t0 = H.now()
    assert(upload(sink, data, 12, 0.4))
    assert.is_true(H.now() - t0 > 4, "the upload lasted longer than a token")
    check_object(srv, "long", data)
    local st = srv:auth_stats()
    assert.is_true(st.token_requests >= 2, "refreshed: " .. st.token_requests)
    assert.equal(0, st.unauthorized)
    srv:stop()
  end)

  it("100 concurrent writers share one token fetch", function()
    -- a slow token endpoint: every writer's first request comes while the one fetch runs
    local srv = start { auth = { public_key = PUB, token_delay = 0.5 } }
    local key = sa_file(srv:url() .. "/token", PRIV)
    local ws, datas = {}, {}
    for i = 1, 100 do
      datas[i] = H.random_bytes(20 * KiB + i)
      ws[i] = assert(rw.new(bg, { sink = rw.gcs { bucket = "b", object = "o" .. i, endpoint = srv:url(),
                                                  credentials_file = key } }))
      assert(ws[i]:WriteAt(0, datas[i]))
    end
    -- all Complete at once (workgroup coroutines): 100 uploads in flight together
    local wg = rw.workgroup.new {}
    for i = 1, 100 do
      wg:go(function()
        assert(ws[i]:Complete())
        ws[i]:close()
      end)
    end
    local ok, err = wg:wait()
    assert(ok, tostring(err))
    for i = 1, 100 do check_object(srv, "o" .. i, datas[i]) end
    assert.equal(1, srv:auth_stats().token_requests)
    srv:stop()
  end)

  it("a reader uses the same credentials: a key file (a 401 refreshes once), token_fn, or none", function()
    local srv = start { auth = { public_key = PUB, token_lifetime = 3 } }
    local key = sa_file(srv:url() .. "/token", PRIV)
    local data = H.random_bytes(MiB + 99)
    assert(upload(rw.gcs { bucket = "b", object = "rd", endpoint = srv:url(), credentials_file = key }, data, 2))
    local r = assert(rw.reader(bg, { source = rw.gcs { bucket = "b", object = "rd", endpoint = srv:url(),
                                                         credentials_file = key } }))
    local off = math.random(0, #data - 1000)
    assert.equal(data:sub(off + 1, off + 1000), assert(r:ReadAt(off, 1000)))
    local before = srv:auth_stats()
    srv:revoke_tokens()
    local lines, s = H.capture_log(r.ReadAt, r, 0, 500)
    assert.equal(data:sub(1, 500), s)
    local after = srv:auth_stats()
    assert.equal(1, after.token_requests - before.token_requests, "one fresh token after the 401")
    assert.equal(1, after.unauthorized - before.unauthorized)
    for _, l in ipairs(lines) do no_secret(l, { KEY_LINE, "ya29.fake-" }) end
    r:close()
    -- token_fn: called on the Lua thread, again when its token nears expiry
    local calls, main = 0, coroutine.running()
    local r2 = assert(rw.reader(bg, { source = rw.gcs { bucket = "b", object = "rd", endpoint = srv:url(),
      token_fn = function()
        calls = calls + 1
        assert(coroutine.running() == main)
        return srv:mint_token(), 2
      end } }))
    assert.equal(data, assert(r2:ReadAt(0, #data)))
    bg:wait(1.7) -- past the early-refresh point of a 2 s token
    assert.equal(data:sub(-10), assert(r2:ReadAt(#data - 10, 10)))
    assert.is_true(calls >= 2, "token_fn called " .. calls .. " times")
    r2:close()
    -- an endpoint without credentials is anonymous: the server's 401
    local r3 = assert(rw.reader(bg, { source = rw.gcs { bucket = "b", object = "rd", endpoint = srv:url() } }))
    local _, nothing, err = H.capture_log(r3.ReadAt, r3, 0, 10)
    assert.is_nil(nothing)
    assert.equal("http.401", err.code)
    r3:close()
    srv:stop()
  end)

  it("the proxy holds the GCS credentials: its sessions share one token; clients hold only the proxy secret", function()
    local srv = start()
    local psecret = H.random_bytes(32)
    local key = sa_file(srv:url() .. "/token", PRIV)
    local px = assert(rw.proxy.start { upstream = srv:url(), secret = psecret, credentials_file = key })
    local datas = {}
    for i = 1, 3 do
      datas[i] = H.random_bytes(MiB + 1000 * i)
      local sink = rw.proxy_sink { addr = px:addr(), secret = psecret, bucket = "b", object = "px" .. i, connections = 2 }
      assert(upload(sink, datas[i], 4))
      check_object(srv, "px" .. i, datas[i])
    end
    assert.equal(1, srv:auth_stats().token_requests, "one token for every session of the proxy")
    assert.equal(0, srv:auth_stats().unauthorized)
    px:stop()
    -- without credentials the proxy is anonymous: the fake refuses it
    local anon = assert(rw.proxy.start { upstream = srv:url(), secret = psecret })
    local lines, obj, err = H.capture_log(upload, rw.proxy_sink { addr = anon:addr(), secret = psecret, bucket = "b",
                                                                  object = "anon" }, H.random_bytes(1000))
    assert.is_nil(obj)
    assert.truthy(tostring(err):find("401", 1, true), tostring(err))
    assert.is_true(#lines >= 0)
    anon:stop()
    assert.truthy(H.raised(rw.proxy.start, { upstream = srv:url(), secret = psecret, credentials = "mine" })
      :find("'credentials' must be \"default\"", 1, true))
    local _, e2 = rw.proxy.start { upstream = srv:url(), secret = psecret, credentials_file = dir .. "/missing.json" }
    assert.truthy(tostring(e2):find("missing.json", 1, true), tostring(e2))
    srv:stop()
  end)

  it("token_fn runs on the Lua thread, at first and again ahead of expiry", function()
    local srv = start { auth = { public_key = PUB, token_lifetime = 2 } }
    local calls, main = 0, coroutine.running()
    local sink = rw.gcs { bucket = "b", object = "fn", endpoint = srv:url(), token_fn = function()
      calls = calls + 1
      assert(coroutine.running() == main)
      return srv:mint_token(), 2
    end }
    local data = H.random_bytes(4 * MiB + 3)
    assert(upload(sink, data, 8, 0.5))
    check_object(srv, "fn", data)
    assert.is_true(calls >= 2, "called " .. calls .. " times")
    assert.equal(0, srv:auth_stats().unauthorized)
    srv:stop()
  end)

  it("a token_fn that fails ends the upload with its error, not a retry loop", function()
    local srv = start()
    local sink = rw.gcs { bucket = "b", object = "fnbad", endpoint = srv:url(),
                          token_fn = function() error("vault unreachable") end }
    local lines, w, err = H.capture_log(rw.new, bg, { sink = sink })
    assert.is_nil(w)
    assert.equal("auth.unauthenticated", err.code)
    assert.truthy(err.message:find("vault unreachable", 1, true), err.message)
    assert.is_true(#lines >= 0)
    srv:stop()
  end)

  it("a 401 refreshes the token once; a second 401 is auth.unauthenticated, not retried", function()
    local srv = start()
    local key = sa_file(srv:url() .. "/token", PRIV)
    local data = H.random_bytes(2 * MiB + 5)
    local w = assert(rw.new(bg, { sink = rw.gcs { bucket = "b", object = "r", endpoint = srv:url(),
                                                  credentials_file = key }, max_chunk_size = 256 * KiB }))
    assert(w:WriteAt(0, data:sub(1, MiB)))
    local t0 = H.now()
    while w:stats().persisted < 768 * KiB and H.now() - t0 < 10 do w:wait(0.05) end
    assert.is_true(w:stats().persisted >= 768 * KiB, "the first chunks were sent with the first token")
    srv:revoke_tokens()
    assert(w:WriteAt(MiB, data:sub(MiB + 1)))
    assert(w:Complete())
    w:close()
    check_object(srv, "r", data)
    assert.equal(2, srv:auth_stats().token_requests)
    srv:reject_tokens(true)
    local before = srv:auth_stats()
    local lines, obj, err = H.capture_log(upload, rw.gcs { bucket = "b", object = "r2", endpoint = srv:url(),
                                                           credentials_file = key }, H.random_bytes(300 * KiB))
    assert.is_nil(obj)
    assert.equal("auth.unauthenticated", err.code)
    assert.is_false(err.retryable)
    local after = srv:auth_stats()
    assert.equal(2, after.unauthorized - before.unauthorized)
    assert.equal(1, after.token_requests - before.token_requests)
    assert.is_true(H.has_line(lines, "auth.unauthenticated"))
    for _, l in ipairs(lines) do no_secret(l, { KEY_LINE, "ya29.fake-" }) end
    no_secret(tostring(err), { KEY_LINE, "ya29.fake-" })
    srv:stop()
  end)

  it("bad key files: clear errors naming the file and the rule, never the secret", function()
    local malformed = dir .. "/malformed.json"
    write(malformed, '{"type": "service_account", "private_key": ' .. json_str(PRIV))
    local cases = {
      { malformed, "not a JSON object" },
      { sa_file("http://127.0.0.1:1/token", nil), "no 'private_key'" },
      { sa_file("http://127.0.0.1:1/token", PRIV:sub(1, 500)), "PEM RSA private key" }, -- holds KEY_LINE
      { dir .. "/absent.json", "cannot open" },
    }
    for _, c in ipairs(cases) do
      local msg = H.raised(rw.gcs, { bucket = "b", object = "o", endpoint = "http://127.0.0.1:1", credentials_file = c[1] })
      assert.truthy(msg:find(c[1], 1, true), msg)
      assert.truthy(msg:find(c[2], 1, true), msg)
      no_secret(msg, { KEY_LINE })
    end
    local msg = H.raised(rw.gcs, { bucket = "b", object = "o", token = "t", credentials_file = cases[1][1] })
    assert.truthy(msg:find("exclude each other", 1, true), msg)
    msg = H.raised(rw.gcs, { bucket = "b", object = "o", credentials = "sometimes" })
    assert.truthy(msg:find("credentials", 1, true), msg)
  end)

  it("a key the token endpoint cannot verify: auth.unauthenticated naming the token URI", function()
    local srv = start()
    local uri = srv:url() .. "/token"
    local sink = rw.gcs { bucket = "b", object = "x", endpoint = srv:url(),
                          credentials_file = sa_file(uri, read(dir .. "/other.pem")) }
    local lines, obj, err = H.capture_log(upload, sink, "abc")
    assert.is_nil(obj)
    assert.equal("auth.unauthenticated", err.code)
    assert.truthy(tostring(err):find(uri, 1, true), tostring(err))
    assert.truthy(tostring(err):find("Invalid JWT Signature", 1, true), tostring(err))
    assert.equal(1, srv:auth_stats().token_requests)
    for _, l in ipairs(lines) do no_secret(l, { KEY_LINE }) end
    srv:stop()
  end)

  it("the ADC chain: the metadata server after its probe, and nothing found -> auth.no_credentials", function()
    local srv = start()
    local empty = dir .. "/gcloud-empty"
    sh("mkdir -p '" .. empty .. "'")
    local script = ([[
      local rw = require "reliablewriter"
      local sink = rw.gcs { bucket = "b", object = "meta", credentials = "default", endpoint = "%s" }
      local w = assert(rw.new(rw.context.background(), { sink = sink, retry = { total_wait = 2 } }))
      assert(w:WriteAt(0, ("m"):rep(1000)))
      local obj, err = w:Complete()
      print("result", obj and obj.size, err and err.code, err and err.retryable)
      print("message", err and err.message)
    ]]):format(srv:url())
    local env = ("GCE_METADATA_HOST=%s CLOUDSDK_CONFIG=%s GOOGLE_APPLICATION_CREDENTIALS= RW_LOG_LEVEL=error")
      :format(srv:url():gsub("^http://", ""), empty)
    local out = child(env, script)
    assert.truthy(out:find("result\t1000\tnil", 1, true), out)
    assert.equal(1, srv:auth_stats().metadata_requests)
    check_object(srv, "meta", ("m"):rep(1000))
    -- Not on GCE: a closed port; the chain ends at once with what it tried.
    env = ("GCE_METADATA_HOST=127.0.0.1:1 CLOUDSDK_CONFIG=%s GOOGLE_APPLICATION_CREDENTIALS= RW_LOG_LEVEL=error"):format(empty)
    local t0 = H.now()
    out = child(env, script)
    assert.is_true(H.now() - t0 < 5, "no retry loop")
    assert.truthy(out:find("result\tnil\tauth.no_credentials\tfalse", 1, true), out)
    assert.truthy(out:find("GOOGLE_APPLICATION_CREDENTIALS", 1, true), out)
    assert.truthy(out:find(empty, 1, true), out)
    assert.truthy(out:find("127.0.0.1:1", 1, true), out)
    -- GOOGLE_APPLICATION_CREDENTIALS comes first.
    env = ("GCE_METADATA_HOST=127.0.0.1:1 CLOUDSDK_CONFIG=%s GOOGLE_APPLICATION_CREDENTIALS=%s RW_LOG_LEVEL=error")
      :format(empty, sa_file(srv:url() .. "/token", PRIV))
    out = child(env, script)
    assert.truthy(out:find("result\t1000\tnil", 1, true), out)
    assert.equal(1, srv:auth_stats().token_requests)
    srv:stop()
  end)

  it("an emulator variable or an endpoint means anonymous unless credentials = \"default\"", function()
    local srv = start()
    local lines, obj, err = H.capture_log(upload, rw.gcs { bucket = "b", object = "anon", endpoint = srv:url() }, "abc")
    assert.is_nil(obj)
    assert.equal("http.401", err.code) -- the server's own refusal: no credentials were sent
    assert.truthy(err.message:find("no bearer token", 1, true), err.message)
    assert.equal(0, srv:auth_stats().token_requests + srv:auth_stats().metadata_requests)
    assert.is_true(#lines > 0)
    srv:stop()
  end)

  describe("TLS", function()
    local ca, wrong_ca, cert, key
    setup(function()
      sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s/ca.key' -out '%s/ca.pem' -days 2 -subj /CN=rw-test-ca"):format(dir, dir))
      sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s/wca.key' -out '%s/wca.pem' -days 2 -subj /CN=rw-wrong-ca"):format(dir, dir))
      sh(("openssl req -newkey rsa:2048 -nodes -keyout '%s/srv.key' -out '%s/srv.csr' -subj /CN=127.0.0.1"):format(dir, dir))
      write(dir .. "/ext.cnf", "subjectAltName=IP:127.0.0.1\n")
      sh(("openssl x509 -req -in '%s/srv.csr' -CA '%s/ca.pem' -CAkey '%s/ca.key' -CAcreateserial -out '%s/srv.pem' -days 2 -extfile '%s/ext.cnf'")
        :format(dir, dir, dir, dir, dir))
      ca, wrong_ca = dir .. "/ca.pem", dir .. "/wca.pem"
      cert, key = read(dir .. "/srv.pem"), read(dir .. "/srv.key")
    end)

    it("uploads over HTTPS with a CA made at test time (token URI over HTTPS too)", function()
      local srv = start { tls = { cert = cert, key = key } }
      assert.truthy(srv:url():match("^https://"))
      local data = H.random_bytes(MiB + 9)
      local sink = rw.gcs { bucket = "b", object = "tls", endpoint = srv:url(), ca_file = ca,
                            credentials_file = sa_file(srv:url() .. "/token", PRIV) }
      assert(upload(sink, data, 2))
      check_object(srv, "tls", data)
      srv:stop()
    end)

    it("a wrong CA fails at once with net.tls_verify, not retried", function()
      local srv = start { tls = { cert = cert, key = key } }
      local sink = rw.gcs { bucket = "b", object = "tls2", endpoint = srv:url(), ca_file = wrong_ca,
                            token = srv:mint_token() }
      local t0 = H.now()
      local lines, obj, err = H.capture_log(upload, sink, "abc")
      assert.is_nil(obj)
      assert.equal("net.tls_verify", err.code)
      assert.is_false(err.retryable)
      assert.is_true(H.now() - t0 < 2, "at once")
      assert.is_true(#lines > 0)
      srv:stop()
    end)
  end)

  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)
end)
