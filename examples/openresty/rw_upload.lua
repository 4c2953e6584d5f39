-- rw_upload: streams an HTTP request body into Google Cloud Storage with
-- reliablewriter from an nginx worker (lua-nginx-module / OpenResty), without
-- buffering the body and without blocking the worker.
--
--   location ~ ^/upload/(?<rw_bucket>[^/]+)/(?<rw_object>.+)$ {
--     client_max_body_size 0;
--     content_by_lua_block { require("rw_upload").handle() }
--   }
--
-- PUT (or POST) /upload/<bucket>/<object>: the body becomes gs://bucket/object.
-- Bodies with a Content-Length are read in pieces through ngx.req.socket();
-- chunked bodies (Transfer-Encoding: chunked, what `curl -T -` sends) through
-- the raw request socket, decoded here (the cosocket API does not), with limits
-- on the chunk-size line, the size's hex digits, and the trailers.
-- A client that disconnects (or stalls past read_timeout) mid-body aborts the
-- upload: the session is deleted at GCS and no object is made.
-- At most max_uploads uploads run at once per worker; more are answered
-- 503 with Retry-After.
--
-- Settings: handle(opts) with the fields of DEFAULTS below; the nginx
-- variables $rw_bucket, $rw_object, $rw_endpoint (empty: the real GCS) and
-- $rw_max_uploads override them when they are defined in the location.
--
-- The library is required on the first request, never while nginx reads its
-- configuration: it starts threads on first use, and nginx forks its workers
-- after loading the configuration (threads do not survive a fork).
local M = {}

local KiB, MiB = 1024, 1024 * 1024

M.DEFAULTS = {
  endpoint = nil,           -- GCS endpoint (nil: the real GCS, default credentials)
  max_uploads = 16,         -- per worker; more are answered 503
  retry_after = 2,          -- seconds, in the 503's Retry-After
  -- Bytes read from the client per receive: each is a new Lua string. Keep
  -- it at most 127 KiB (the string's header and the allocator's overhead
  -- count too): LuaJIT's allocator gives blocks of 128 KiB or more their own
  -- mmap (and munmap when collected), so each 1 MiB piece could be 256 page
  -- faults on fresh zeroed pages (66,052 per 256 MiB, 0.31-0.44 s of the
  -- worker's CPU against 0.17-0.22 s, in some runs: docs/OPENRESTY.md).
  piece = 120 * KiB,
  read_timeout = 60,        -- seconds a client may stay silent mid-body
  max_chunk_line = 4096,    -- bytes of a chunk-size line (with extensions)
  max_trailers = 16 * KiB,  -- bytes of all trailer lines together
  writer = { max_cache_size = 8 * MiB, min_chunk_size = 256 * KiB, max_chunk_size = 2 * MiB },
}

local active = 0 -- uploads running in this worker (one Lua VM per worker)
M.active = function() return active end

local rw -- required on first use

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- A flat table as JSON (strings, numbers, booleans).
local function json(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    local vs = type(v) == "number" and string.format("%.17g", v)
      or type(v) == "boolean" and tostring(v) or json_string(v)
    parts[#parts + 1] = json_string(k) .. ":" .. vs
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- Reads the body in pieces and hands each to sink(data); returns true, or
-- nil, status, message (400 for a malformed body, 408 for a timeout, 499
-- when the client went away).
local function sock_error(what, off, err)
  if err == "timeout" then return nil, 408, ("%s at byte %d: client silent too long"):format(what, off) end
  return nil, 499, ("%s at byte %d: %s (client gone)"):format(what, off, tostring(err))
end

local function read_exact(sock, len, piece, sink, off)
  local done = 0
  while done < len do
    local data, err = sock:receive(math.min(piece, len - done))
    if not data then return sock_error("reading the body", off + done, err) end
    local ok, status, msg = sink(data)
    if not ok then return nil, status, msg end
    done = done + #data
  end
  return true
end

-- A buffered line reader over a cosocket, bounded: lines end with CRLF.
local function line_reader(sock, opts)
  local r = { buf = "" }
  function r.line(max, what, off)
    while true do
      local i = r.buf:find("\r\n", 1, true)
      if i then
        if i - 1 > max then break end
        local l = r.buf:sub(1, i - 1)
        r.buf = r.buf:sub(i + 2)
        return l
      end
      if #r.buf > max then break end
      local data, err = sock:receiveany(math.max(1, max + 2 - #r.buf))
      if not data then return sock_error(what, off, err) end
      r.buf = r.buf .. data
    end
    return nil, 400, ("%s at byte %d: longer than %d bytes (or not ended by CRLF)"):format(what, off, max)
  end
  -- n bytes of data: first what is buffered, then straight from the socket.
  function r.data(n, sink, off)
    if #r.buf > 0 then
      local take = math.min(n, #r.buf)
      local d = r.buf:sub(1, take)
      r.buf = r.buf:sub(take + 1)
      local ok, status, msg = sink(d)
      if not ok then return nil, status, msg end
      n, off = n - take, off + take
    end
    return read_exact(sock, n, opts.piece, sink, off)
  end
  return r
end

-- The size of a chunk from its line: hex digits, then nothing or ";ext".
-- nil, message when the line is not one.
local MAX_HEX = 13 -- 2^52 - 1: exact in a double, far beyond any upload
local function chunk_size(line)
  local hex, rest = line:match("^(%x+)(.*)$")
  if not hex then return nil, "chunk size is not hexadecimal: " .. json_string(line:sub(1, 40)) end
  if not (rest == "" or rest:match("^[ \t]*;")) then
    return nil, "chunk size line has junk after the size: " .. json_string(line:sub(1, 40))
  end
  hex = hex:gsub("^0+(.)", "%1")
  if #hex > MAX_HEX then
    return nil, ("chunk size %s is too large (at most %d hex digits)"):format(hex:sub(1, 40), MAX_HEX)
  end
  return tonumber(hex, 16)
end

-- Decodes a chunked body (RFC 9112 7.1) into sink; trailers are read and dropped.
local function read_chunked(sock, opts, sink)
  local r = line_reader(sock, opts)
  local off = 0
  while true do
    local line, status, msg = r.line(opts.max_chunk_line, "chunk size line", off)
    if not line then return nil, status, msg end
    local n, cerr = chunk_size(line)
    if not n then return nil, 400, ("at byte %d: %s"):format(off, cerr) end
    if n == 0 then break end
    local ok, st2, m2 = r.data(n, sink, off)
    if not ok then return nil, st2, m2 end
    off = off + n
    local crlf, st3 = r.line(0, "end of chunk", off)
    if not crlf then
      if st3 ~= 400 then return nil, st3, "end of chunk" end
      return nil, 400, ("end of chunk at byte %d: CRLF expected after %d bytes of data"):format(off, n)
    end
  end
  local trailers = 0
  while true do
    local left = opts.max_trailers - trailers
    local line, status, msg = r.line(math.max(0, left), "trailers", off)
    if not line then
      if status ~= 400 then return nil, status, msg end
      return nil, 400, ("trailers longer than %d bytes in all (or a line not ended by CRLF)"):format(opts.max_trailers)
    end
    if line == "" then break end
    trailers = trailers + #line + 2
  end
  return true -- anything after it is ignored: the answer closes the connection
end

-- The request's bucket, object and settings.
local function settings(opts)
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  local var = ngx.var
  local function v(name)
    local ok, val = pcall(function() return var[name] end)
    if ok and val and val ~= "" then return val end
    return nil
  end
  o.bucket = v("rw_bucket") or o.bucket
  o.object = v("rw_object") or o.object
  if not o.bucket or not o.object then
    local b, obj = ngx.var.uri:match("^/[^/]+/([^/]+)/(.+)$")
    o.bucket, o.object = o.bucket or b, o.object or (b and obj)
  end
  o.endpoint = v("rw_endpoint") or o.endpoint
  o.max_uploads = tonumber(v("rw_max_uploads")) or o.max_uploads
  local cache_mib = tonumber(v("rw_max_cache_mib"))
  if cache_mib then
    local wo = {}
    for k, val in pairs(o.writer) do wo[k] = val end
    wo.max_cache_size = cache_mib * MiB
    wo.max_chunk_size = math.min(wo.max_chunk_size, cache_mib * MiB)
    o.writer = wo
  end
  -- the URI's captures are decoded and normalized by nginx already (never
  -- decode twice); ?name= (raw) carries names the path cannot ("//", "..")
  local arg = ngx.var.arg_name
  if arg and arg ~= "" then o.object = ngx.unescape_uri(arg) end
  return o
end

-- What kind of body: "length", n | "chunked" | nil, status, message.
local function body_kind()
  local h = ngx.req.get_headers()
  local te, cl = h["transfer-encoding"], h["content-length"]
  if type(te) == "table" or type(cl) == "table" then return nil, 400, "repeated Transfer-Encoding or Content-Length" end
  if te then
    if te:lower() ~= "chunked" then return nil, 501, "Transfer-Encoding " .. json_string(te) .. " is not supported (only chunked)" end
    if cl then return nil, 400, "both Transfer-Encoding and Content-Length" end
    return "chunked"
  end
  local len = cl and cl:match("^%d+$") and tonumber(cl)
  if not len or len > 2 ^ 52 then return nil, 411, "Content-Length (a whole number) or Transfer-Encoding: chunked required" end
  return "length", len
end

-- Runs one upload; returns status, table (the JSON answer), raw socket or nil.
local function upload(o)
  local kind, len, lmsg = body_kind()
  if not kind then return len, { error = lmsg } end
  local sock, raw, serr
  if kind == "chunked" then
    raw = true
    sock, serr = ngx.req.socket(true)
    -- the raw socket does not answer "Expect: 100-continue" by itself
    local expect = ngx.var.http_expect
    if sock and expect and expect:lower() == "100-continue" then
      local _, e = sock:send("HTTP/1.1 100 Continue\r\n\r\n")
      if e then return 499, { error = "sending 100 Continue: " .. e } end
    end
  elseif len > 0 then
    sock, serr = ngx.req.socket()
  end
  if (kind == "chunked" or len > 0) and not sock then
    return 400, { error = "no request body socket: " .. tostring(serr) }
  end
  if sock then sock:settimeout(o.read_timeout * 1000) end
  local wopts = { sink = rw.gcs { bucket = o.bucket, object = o.object, endpoint = o.endpoint } }
  for k, v in pairs(o.writer) do wopts[k] = v end
  local w, err = rw.new(rw.context.background(), wopts)
  if not w then return 500, { error = tostring(err) }, sock, raw end
  local off = 0
  local function sink(data)
    local ok, werr = w:WriteAt(off, data)
    if not ok then return nil, 502, "writing at byte " .. off .. ": " .. tostring(werr) end
    off = off + #data
    return true
  end
  local ok, status, msg
  if kind == "chunked" then ok, status, msg = read_chunked(sock, o, sink)
  else ok, status, msg = read_exact(sock, len, o.piece, sink, 0) end
  if ok then
    local obj, cerr = w:Complete()
    if obj then
      w:close()
      return 200, { bucket = obj.bucket, name = obj.name, size = obj.size, crc32c = obj.crc32c,
        md5Hash = obj.md5Hash, generation = obj.generation }, sock, raw
    end
    status, msg = 502, "completing: " .. tostring(cerr)
  end
  w:Abort() -- deletes the session (on the pool; this request yields meanwhile)
  w:close()
  return status, { error = msg }, sock, raw
end

local REASONS = { [200] = "OK", [400] = "Bad Request", [405] = "Method Not Allowed", [408] = "Request Timeout",
  [411] = "Length Required", [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable" }

-- Answers without ngx.exit, so that a caller's code after handle() runs.
local function respond(status, body, sock, raw)
  local text = json(body) .. "\n"
  if status >= 400 then
    ngx.log(status >= 500 and ngx.ERR or ngx.WARN, "rw_upload: ", ngx.var.uri, ": ", status, " ", body.error)
  end
  if raw then
    -- the raw socket owns the connection: the answer goes through it
    if status ~= 499 then
      sock:send(("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
        :format(status, REASONS[status] or "", #text, text))
    end
    return
  end
  ngx.status = status
  if status == 499 then return end -- nobody to answer
  ngx.header["Content-Type"] = "application/json"
  ngx.print(text)
end

-- The content handler.
function M.handle(opts)
  local method = ngx.req.get_method()
  if method ~= "PUT" and method ~= "POST" then return respond(405, { error = "use PUT or POST" }) end
  local o = settings(opts)
  if not o.bucket or not o.object or o.object == "" then
    return respond(400, { error = "the URI must be /<prefix>/<bucket>/<object>" })
  end
  if active >= o.max_uploads then
    ngx.header["Retry-After"] = tostring(o.retry_after)
    return respond(503, { error = ("%d uploads already run in this worker (max_uploads)"):format(active) })
  end
  rw = rw or require "reliablewriter"
  active = active + 1
  local ok, status, body, sock, raw = pcall(upload, o)
  active = active - 1
  if not ok then return respond(500, { error = tostring(status) }) end
  return respond(status, body, sock, raw)
end

return M
