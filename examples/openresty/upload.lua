-- Streams the request body into Google Cloud Storage with reliablewriter,
-- without blocking the nginx worker: the body is read in pieces through
-- ngx.req.socket(), and while the writer's cache is full WriteAt waits with
-- ngx.sleep polling (reliablewriter.waiting picks that policy by itself in
-- the rewrite/access/content phases).
--
-- Use from a location:   content_by_lua_file examples/openresty/upload.lua;
-- Settings (nginx variables, set with `set $rw_... value;` in the location):
--   $rw_bucket    bucket (required)
--   $rw_endpoint  GCS endpoint, e.g. http://127.0.0.1:4443 for an emulator
--                 (empty: the real GCS, with default credentials)
-- The object name is the rest of the URI after the location prefix, or ?name=.
--
-- Note: w:Abort() (client gone, GCS failure) runs in C on the worker's thread:
-- it waits for the chunk in flight to stop and DELETEs the session (bounded by
-- the writer's abort_timeout), so it can hold the worker for a round trip to
-- GCS (measured ~50 ms through a 20 ms-latency proxy; the bound is abort_timeout).
--
-- The module is required here, in the handler, never at load time of the
-- configuration: the library starts threads, and nginx forks its workers
-- after reading the configuration (threads do not survive a fork).
local rw = require "reliablewriter"
local cjson_ok, cjson = pcall(require, "cjson.safe")

local KiB, MiB = 1024, 1024 * 1024
local PIECE = 256 * KiB

local function json(t)
  if cjson_ok then return cjson.encode(t) end
  -- Minimal encoder for the flat tables we answer with.
  local parts = {}
  for k, v in pairs(t) do
    local vs
    if type(v) == "number" then vs = string.format("%.17g", v)
    elseif type(v) == "boolean" then vs = tostring(v)
    else vs = string.format("%q", tostring(v)):gsub("\\\n", "\\n") end
    parts[#parts + 1] = string.format("%q:%s", tostring(k), vs)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function fail(status, msg)
  ngx.log(ngx.ERR, "upload: ", msg)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(json { error = tostring(msg) })
  return ngx.exit(status)
end

if ngx.req.get_method() ~= "PUT" and ngx.req.get_method() ~= "POST" then
  return fail(405, "use PUT or POST")
end

local bucket = ngx.var.rw_bucket
local endpoint = ngx.var.rw_endpoint
if endpoint == "" then endpoint = nil end
local name = ngx.var.arg_name or ngx.var.uri:match("^/[^/]+/(.+)$")
if not bucket or bucket == "" or not name or name == "" then
  return fail(400, "bucket and object name needed")
end
name = ngx.unescape_uri(name)

local w, err = rw.new(rw.context.background(), {
  sink = rw.gcs { bucket = bucket, object = name, endpoint = endpoint },
  max_cache_size = 4 * MiB, min_chunk_size = 256 * KiB, max_chunk_size = 1 * MiB,
})
if not w then return fail(500, err) end

-- Chunked request bodies have no Content-Length: ngx.req.socket() needs one,
-- so those are refused here (or enable `lua_need_request_body`, which buffers).
local len = tonumber(ngx.var.http_content_length)
if not len then
  w:Abort()
  return fail(411, "Content-Length required")
end

local sock
if len > 0 then -- an empty body has no socket to read
  local serr
  sock, serr = ngx.req.socket()
  if not sock then
    w:Abort()
    return fail(400, "no request body socket: " .. tostring(serr))
  end
  sock:settimeout(60000) -- per read: a stalled client gives up after 60 s
end

local off = 0
while off < len do
  local n = math.min(PIECE, len - off)
  local data, rerr = sock:receive(n)
  if not data then
    -- The client went away (or timed out): cancel the session at GCS.
    w:Abort()
    return fail(400, "reading the body at " .. off .. ": " .. tostring(rerr))
  end
  local ok, werr = w:WriteAt(off, data)
  if not ok then
    w:Abort()
    return fail(502, werr)
  end
  off = off + #data
end

local obj, cerr = w:Complete()
if not obj then
  w:Abort()
  return fail(502, cerr)
end
w:close()

ngx.header["Content-Type"] = "application/json"
ngx.say(json { bucket = obj.bucket, name = obj.name, size = obj.size, crc32c = obj.crc32c,
  md5Hash = obj.md5Hash, generation = obj.generation })
