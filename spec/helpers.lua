-- Shared helpers for the specs: a printed seed, random bytes, the module.
local H = {}

local seed = tonumber(os.getenv("RW_TEST_SEED") or "") or (os.time() * 1000 + math.floor(os.clock() * 1e6) % 1000)
H.seed = seed
io.stderr:write(("[spec] seed=%d (set RW_TEST_SEED to repeat)\n"):format(seed))
math.randomseed(seed)

function H.rw() return require "reliablewriter" end

-- n random bytes from the seeded generator.
function H.random_bytes(n)
  local parts, chunk = {}, {}
  local i = 0
  while i < n do
    local m = math.min(4096, n - i)
    for j = 1, m do chunk[j] = math.random(0, 255) end
    parts[#parts + 1] = string.char((table.unpack or unpack)(chunk, 1, m))
    i = i + m
  end
  return table.concat(parts)
end

function H.now() return require("reliablewriter.core").util.monotime() end

-- Message of an error raised by fn(...).
function H.raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error to be raised")
  return tostring(err)
end

-- Runs fn(...) with the library's log captured (warn and above); returns the
-- captured lines (a list of strings) and fn's results. Specs that expect a
-- failure use it, so a passing run prints no error lines, and assert on them.
function H.capture_log(fn, ...)
  local log = require("reliablewriter").log
  log.capture("warn")
  local function pack(...) return { n = select("#", ...), ... } end
  local r = pack(pcall(fn, ...))
  local lines = log.stop()
  if not r[1] then error(r[2], 0) end
  return lines, (table.unpack or unpack)(r, 2, r.n)
end

-- True when one of the lines matches the Lua pattern.
function H.has_line(lines, pattern)
  for _, l in ipairs(lines) do if l:match(pattern) then return true end end
  return false
end

-- ---- the writer against the fake GCS (writer_spec, hardening_spec) ----

-- A fake GCS (memory store, bucket "b" unless opts say otherwise).
function H.start_server(opts)
  opts = opts or {}
  opts.buckets = opts.buckets or { "b" }
  opts.store = opts.store or "memory"
  return require("reliablewriter.testbed").fakegcs.start(opts)
end

-- POST /retry_test with the instructions; returns the id.
function H.retry_test(srv, instructions)
  local parts = {}
  for method, list in pairs(instructions) do
    local q = {}
    for i, v in ipairs(list) do q[i] = '"' .. v .. '"' end
    parts[#parts + 1] = ('"%s": [%s]'):format(method, table.concat(q, ","))
  end
  local body = '{"instructions": {' .. table.concat(parts, ",") .. '}}'
  local p = io.popen(("curl -s -X POST -H 'Content-Type: application/json' --data '%s' %s/retry_test"):format(body, srv:url()))
  local out = p:read("a")
  p:close()
  local id = out:match('"id"%s*:%s*"([^"]+)"')
  assert(id, "retry_test gave no id: " .. out)
  return id
end

-- true once every instruction of the retry test was consumed (and the reply).
function H.retry_test_done(srv, id)
  local p = io.popen(("curl -s %s/retry_test/%s"):format(srv:url(), id))
  local out = p:read("a")
  p:close()
  return out:match('"completed"%s*:%s*true') ~= nil, out
end

-- The HTTP status of a status query on a session URI (308 live, 404/499 gone).
function H.session_status(uri)
  local p = io.popen(("curl -s -o /dev/null -w '%%{http_code}' -X PUT -H 'Content-Range: bytes */*' " ..
    "-H 'Content-Length: 0' '%s'"):format(uri))
  local code = tonumber(p:read("a"))
  p:close()
  return code
end

-- A retry config that waits milliseconds, seeded from the printed seed.
function H.fast_retry(extra)
  local r = { min_wait = 0.005, max_wait = 0.05, total_wait = 30, seed = seed % 100000 + 1 }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

-- rw.new's options for a GCS upload of `name` to srv's bucket "b".
function H.gcs_opts(srv, name, opts, sink_opts)
  local rw = H.rw()
  local so = { bucket = "b", object = name, endpoint = srv:url() }
  for k, v in pairs(sink_opts or {}) do so[k] = v end
  local o = { sink = rw.gcs(so), retry = H.fast_retry(), stall_timeout = 5 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

function H.gcs_writer(srv, name, opts, sink_opts)
  return H.rw().new(H.rw().context.background(), H.gcs_opts(srv, name, opts, sink_opts))
end

-- true once fn() is (looking every 10 ms for `secs`, default 3), else fn()'s last answer.
function H.eventually(fn, secs)
  local deadline = H.now() + (secs or 3)
  repeat
    if fn() then return true end
    H.rw().util.sleep(0.01)
  until H.now() > deadline
  return fn()
end
-- LuaJIT: a trace recorded through this loop keeps the closure it was
-- recorded with as a constant, and with it what the closure holds (a writer
-- a later test expects to be collected): never compile it.
if jit then jit.off(H.eventually) end

-- The writer's session URI, once it has one (raises after 5 s).
function H.session_uri(w)
  assert(H.eventually(function() return w:session() ~= nil end, 5), "the writer never opened a session")
  return w:session().uri
end

-- Asserts that got (the server's bytes) equals want: size, random offsets, all.
function H.assert_same_bytes(got, want, what)
  assert(got, what .. ": no object on the server")
  assert(#got == #want, ("%s: size %d, want %d (seed %d)"):format(what, #got, #want, seed))
  for _ = 1, 32 do -- random offsets first: a clearer failure than one huge compare
    local i = math.random(1, math.max(1, #want))
    assert(want:byte(i) == got:byte(i), ("%s: byte at offset %d (seed %d)"):format(what, i - 1, seed))
  end
  assert(got == want, what .. ": content differs (seed " .. seed .. ")")
end

-- Lua pattern that matches s literally.
function H.lit(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

-- ---- files and folders (file_safety_spec, sinks_spec) ----

-- A fresh folder /tmp/<prefix>_XXXXXX (the caller removes it).
function H.tmp_dir(prefix)
  local p = io.popen("mktemp -d /tmp/" .. prefix .. "_XXXXXX")
  local d = p:read("l")
  p:close()
  assert(d and #d > 0, "mktemp -d failed")
  return d
end

-- true when the shell command exited 0 (Lua 5.4 / LuaJIT).
function H.ran(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

function H.write_file(path, data)
  local f = assert(io.open(path, "wb")); f:write(data); f:close()
end

-- The file's bytes, or nil when it cannot be opened.
function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a"); f:close(); return s
end

-- How many of the file sink's temporary files (*.rwtmp) are in dir.
function H.tmp_files(dir)
  local p = io.popen("ls -A '" .. dir .. "'")
  local n = 0
  for name in p:lines() do if name:match("%.rwtmp$") then n = n + 1 end end
  p:close()
  return n
end

-- Runs the Lua source in a fresh interpreter of this flavour (lua5.4 or
-- luajit, with this checkout's modules), after the shell commands in
-- `prefix` (e.g. "ulimit -n 64; "); returns what it printed (stdout and stderr).
function H.run_lua(source, prefix)
  local lua, cdir = "lua5.4", "build/lua5.4"
  if rawget(_G, "jit") then lua, cdir = "luajit", "build/luajit" end
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(source)
  f:close()
  local cmd = ("sh -c '%sLUA_PATH=\"lua/?.lua;lua/?/init.lua;;\" LUA_CPATH=\"%s/?.so;;\" exec %s %s' 2>&1")
    :format(prefix or "", cdir, lua, script)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  os.remove(script)
  return out
end

return H
