-- rwup: the command-line front door (bin/rwup runs M.main(arg)).
--
--   rwup cp [options] SRC DST      SRC, DST: a local path, "-" (stdin/stdout)
--                                  or gs://bucket/object
--
-- Uploads go through the ReliableWriter (files by write_file: C reads them,
-- no Lua strings in the data path), downloads through the ReliableReader.
-- Interrupted uploads of files resume when the same command runs again: the
-- session is kept in a state file. Exit codes: see M.EXIT and docs/CLI.md.
local rw = require "reliablewriter"

local M = {}

M.EXIT = { ok = 0, failed = 1, usage = 2, budget = 3, cancelled = 4, verify = 5 }
local EXIT = M.EXIT
local KiB, MiB = 1024, 1024 * 1024

M.USAGE = [[
usage: rwup cp [options] SRC DST
  SRC, DST            a local path, - (stdin or stdout), or gs://BUCKET/OBJECT
options:
  --chunk SIZE        bytes per request, a multiple of 256K (default 16M)
  --cache SIZE        bytes held until GCS confirms them, >= --chunk (default 64M)
  --checksum KIND     crc32c | md5 | both | none (default crc32c)
  --if-absent         fail if the object exists (ifGenerationMatch=0)
  --content-type T    the object's content type
  --metadata K=V      custom metadata (repeat for more)
  --state FILE        where an interrupted upload's state is kept
                      (default: $XDG_STATE_HOME/reliablewriter/, keyed by SRC and DST)
  --no-resume         start over even if a state file says otherwise
  --progress MODE     auto | bar | json | none (default auto: bar on a terminal)
  --manifest FILE     append one CSV line per transfer
  --endpoint URL      the GCS endpoint (default: $STORAGE_EMULATOR_HOST, then Google's)
  --retry-budget S    seconds of backoff allowed per chunk before giving up (default 600)
  --stall-timeout S   seconds without a byte moving before a request is retried (default 30)
  --quiet             no progress, no summary
exit codes: 0 done, 1 failed, 2 usage, 3 retry budget exhausted,
            4 cancelled (state saved), 5 verification failed]]

-- ---------------------------------------------------------------- arguments

local function usage_error(msg) error({ usage = msg }, 0) end

-- "16M" -> 16777216; K, M, G (powers of 1024), an optional "i"/"iB"/"B".
function M.parse_size(s, flag)
  local n, unit = tostring(s):match("^(%d+)([KkMmGg]?)[iI]?[bB]?$")
  if not n then usage_error(("%s: '%s' is not a size (a whole number, optionally followed by K, M or G)"):format(flag, tostring(s))) end
  local mult = ({ [""] = 1, k = KiB, m = MiB, g = 1024 * MiB })[unit:lower()]
  local v = tonumber(n) * mult
  if v > 2 ^ 40 then usage_error(("%s: %s is absurdly large (at most 1T)"):format(flag, s)) end
  return math.tointeger(v) or v
end

-- A location: { kind = "gs", bucket, object } | { kind = "std" } | { kind = "file", path }.
function M.parse_location(s, what)
  if s == "-" then return { kind = "std", text = "-" } end
  if s:sub(1, 5) == "gs://" then
    local bucket, object = s:match("^gs://([^/]+)/(.+)$")
    if not bucket then
      usage_error(("%s: '%s' must be gs://BUCKET/OBJECT with both parts non-empty"):format(what, s))
    end
    return { kind = "gs", bucket = bucket, object = object, text = s }
  end
  if s == "" then usage_error(what .. ": an empty path") end
  return { kind = "file", path = s, text = s }
end

local VALUE_FLAGS = { chunk = true, cache = true, checksum = true, ["content-type"] = true,
                      metadata = true, state = true, progress = true, manifest = true, endpoint = true,
                      ["retry-budget"] = true, ["stall-timeout"] = true }
local BOOL_FLAGS = { ["if-absent"] = true, quiet = true, ["no-resume"] = true, help = true }

function M.parse_args(argv)
  local o = { chunk = 16 * MiB, cache = 64 * MiB, checksum = "crc32c", progress = "auto",
              metadata = {}, args = {} }
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, inline = a:match("^%-%-([%w%-]+)=(.*)$")
    name = name or a:match("^%-%-([%w%-]+)$")
    if name and VALUE_FLAGS[name] then
      local v = inline
      if not v then
        i = i + 1
        v = argv[i]
        if v == nil then usage_error(("--%s needs a value"):format(name)) end
      end
      if name == "metadata" then
        local k, val = v:match("^([^=]+)=(.*)$")
        if not k then usage_error(("--metadata: '%s' must be KEY=VALUE"):format(v)) end
        o.metadata[k] = val
      else
        o[name] = v
      end
    elseif name and BOOL_FLAGS[name] then
      if inline then usage_error(("--%s takes no value"):format(name)) end
      o[name] = true
    elseif a:sub(1, 2) == "--" and a ~= "--" or (a:sub(1, 1) == "-" and a ~= "-") then
      usage_error(("unknown option '%s'"):format(a))
    else
      o.args[#o.args + 1] = a
    end
    i = i + 1
  end
  if o.help then return o end
  o.chunk = M.parse_size(o.chunk, "--chunk")
  o.cache = M.parse_size(o.cache, "--cache")
  if o.chunk < 256 * KiB or o.chunk % (256 * KiB) ~= 0 then
    usage_error(("--chunk: %d is not a multiple of 256K (GCS takes chunks of 256 KiB multiples)"):format(o.chunk))
  end
  if o.cache < o.chunk then
    usage_error(("--cache: %d is smaller than --chunk %d (the cache must hold a chunk)"):format(o.cache, o.chunk))
  end
  if o["retry-budget"] then
    local v = tonumber(o["retry-budget"])
    if not v or v ~= v or v < 0 or v > 86400 then
      usage_error(("--retry-budget: '%s' must be a number of seconds between 0 and 86400"):format(o["retry-budget"]))
    end
    o["retry-budget"] = v
  end
  if o["stall-timeout"] then
    local v = tonumber(o["stall-timeout"])
    if not v or v ~= v or v <= 0 or v > 3600 then
      usage_error(("--stall-timeout: '%s' must be a number of seconds above 0, at most 3600"):format(o["stall-timeout"]))
    end
    o["stall-timeout"] = v
  end
  local sums = { crc32c = true, md5 = true, both = true, none = true }
  if not sums[o.checksum] then usage_error(("--checksum: '%s' is not one of crc32c, md5, both, none"):format(o.checksum)) end
  local modes = { auto = true, bar = true, json = true, none = true }
  if not modes[o.progress] then usage_error(("--progress: '%s' is not one of auto, bar, json, none"):format(o.progress)) end
  if o.args[1] ~= "cp" then
    usage_error(o.args[1] and ("unknown command '%s' (the command is cp)"):format(o.args[1]) or "no command (rwup cp SRC DST)")
  end
  if #o.args ~= 3 then usage_error(("cp takes SRC and DST, got %d argument(s)"):format(#o.args - 1)) end
  o.src = M.parse_location(o.args[2], "SRC")
  o.dst = M.parse_location(o.args[3], "DST")
  if o.src.kind ~= "gs" and o.dst.kind ~= "gs" then
    usage_error("one of SRC and DST must be gs://BUCKET/OBJECT (for local copies use cp)")
  end
  if o.src.kind == "gs" and o.dst.kind == "gs" then
    usage_error("copies inside GCS are not supported: SRC or DST must be local or -")
  end
  return o
end

-- ------------------------------------------------------------------ helpers

local function json()
  local ok, cjson = pcall(require, "cjson")
  if not ok then
    error("rwup needs lua-cjson for its state files and --progress json: apt-get install lua-cjson " ..
          "(or luarocks install lua-cjson)", 0)
  end
  return cjson
end

local function fmt_bytes(n)
  if n >= 1024 * MiB then return ("%.2f GiB"):format(n / (1024 * MiB)) end
  if n >= MiB then return ("%.1f MiB"):format(n / MiB) end
  if n >= KiB then return ("%.1f KiB"):format(n / KiB) end
  return ("%d B"):format(n)
end

local function fmt_eta(s)
  if not s or s ~= s or s == math.huge or s < 0 then return "--:--" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s // 3600, s % 3600 // 60, s % 60) end
  return ("%d:%02d"):format(s // 60, s % 60)
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t)) end

-- FNV-1a, 64 bits: a stable file name for a (source, destination) pair.
local function fnv64(s)
  local h = -3750763034362895579 -- 0xcbf29ce484222325
  for i = 1, #s do h = (h ~ s:byte(i)) * 1099511628211 end
  return ("%016x"):format(h)
end

local function default_state_path(src_abs, dst_text, endpoint)
  local base = os.getenv("XDG_STATE_HOME")
  if not base or base == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then return nil end
    base = home .. "/.local/state"
  end
  local name = (src_abs:match("([^/]+)$") or "src"):gsub("[^%w%._%-]", "_"):sub(1, 64)
  return ("%s/reliablewriter/%s-%s.json"):format(base, name, fnv64(src_abs .. "\0" .. dst_text .. "\0" .. (endpoint or "")))
end

local function shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function mkdir_p(dir)
  -- os.execute: no Lua library for mkdir in the standard set, and this runs once per upload.
  return os.execute("mkdir -p -m 700 " .. shq(dir) .. " 2>/dev/null")
end


local function csv(...)
  local out = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    v = tostring(v == nil and "" or v)
    if v:find('[,"\n]') then v = '"' .. v:gsub('"', '""') .. '"' end
    out[i] = v
  end
  return table.concat(out, ",")
end

-- --------------------------------------------------------------- progress

-- A progress reporter: bar (one live line on stderr, at most 4 redraws a
-- second), json (one object a line) or none. Rates over a 5 s sliding window.
local function new_progress(mode, out, total)
  local p = { mode = mode, out = out, total = total, samples = {}, last_draw = -1, retries = 0,
              last_code = nil, t0 = rw.util.monotime(), drawn = false }
  local function rate(now, bytes)
    local s = p.samples
    s[#s + 1] = { now, bytes }
    while #s > 2 and now - s[1][1] > 5 do table.remove(s, 1) end
    local dt = now - s[1][1]
    if dt <= 0 then return 0 end
    return (bytes - s[1][2]) / dt
  end
  function p.update(bytes, retries, code, force)
    local now = rw.util.monotime()
    p.bytes, p.retries = bytes, retries or p.retries
    if code then p.last_code = code end
    local r = rate(now, bytes)
    if not force and now - p.last_draw < 0.25 then return end
    p.last_draw = now
    local eta = (p.total and r > 0) and (p.total - bytes) / r or nil
    if p.mode == "bar" then
      local pct = p.total and p.total > 0 and ("%3d%%"):format(math.floor(bytes * 100 / p.total)) or "    "
      local line = ("\r%s  %s%s  %6.1f MiB/s  ETA %s  retries %d%s"):format(pct, fmt_bytes(bytes),
        p.total and (" / " .. fmt_bytes(p.total)) or "", r / MiB, fmt_eta(eta), p.retries,
        (p.retries > 0 and p.last_code) and (" (" .. p.last_code .. ")") or "")
      p.out:write(line, "\27[K")
      p.out:flush()
      p.drawn = true
    elseif p.mode == "json" then
      p.out:write(json().encode({ event = "progress", bytes = bytes, total = p.total,
        mib_per_s = math.floor(r / MiB * 10 + 0.5) / 10, eta_s = eta and math.floor(eta + 0.5),
        retries = p.retries, last_error = p.last_code, elapsed_s = math.floor((now - p.t0) * 1000) / 1000 }), "\n")
      p.out:flush()
    end
  end
  function p.clear()
    if p.drawn then p.out:write("\r\27[K"); p.out:flush(); p.drawn = false end
  end
  return p
end

-- The library's log lines are captured (not printed under the progress line):
-- retries feed the progress line's last error code; warnings and errors are
-- printed on stderr, after the line is cleared, so none is lost.
-- Error lines are kept for the end (run.errors): the one that ends the
-- transfer is printed by rwup itself with its id, the others after it.
local function drain_log(prog, stderr, run)
  local lines = rw.log.lines()
  local code
  for _, l in ipairs(lines) do
    local c = l:match("retrying after error id=%S+ code=(%S+)")
    if c then code = c end
    if l:find("reliablewriter warn:", 1, true) then
      if prog then prog.clear() end
      stderr:write(l, l:sub(-1) == "\n" and "" or "\n")
    elseif l:find("reliablewriter error:", 1, true) then
      run.errors[#run.errors + 1] = l
    end
  end
  return code
end

-- ----------------------------------------------------------------- state

-- A state file is input like any other: it may be truncated, edited, or
-- planted. Anything but what rwup writes is refused (nil, why) before a
-- request is made; no file is nil. The rule goes into "state file PATH: why".
local STATE_MAX = 64 * KiB

local function whole(v, max)
  return type(v) == "number" and v == v and v >= 0 and v <= max and v % 1 == 0
end

local function got(v)
  return type(v) == "string" and ("'%s'"):format(v:sub(1, 80)) or tostring(v)
end

local function check_state(st)
  if type(st) ~= "table" or st.version ~= 1 then return 'must be a JSON object with "version": 1' end
  for _, k in ipairs { "source", "destination", "mtime" } do
    if type(st[k]) ~= "string" then return ("'%s' must be a string (got %s)"):format(k, got(st[k])) end
  end
  for _, k in ipairs { "size", "ino" } do
    if not whole(st[k], 2 ^ 53) then return ("'%s' must be a whole number from 0 to 2^53 (got %s)"):format(k, got(st[k])) end
  end
  local uri = st.uri
  if type(uri) ~= "string" or #uri > 2048 or not uri:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#%s]+[/?]%S*$") then
    return ("'uri' must be an http(s) URL of at most 2048 bytes (got %s)"):format(got(uri))
  end
  if not whole(st.persisted, st.size) then
    return ("'persisted' must be a whole number from 0 to 'size' %d (got %s)"):format(st.size, got(st.persisted))
  end
  local c = st.crc32c
  if c ~= nil and (type(c) ~= "string" or not c:match("^[%w+/][%w+/][%w+/][%w+/][%w+/][AQgw]==$")) then
    return ("'crc32c' must be the base64 CRC32C of the persisted bytes, 8 characters (got %s)"):format(got(c))
  end
  if st.started ~= nil and type(st.started) ~= "string" then return "'started' must be a string" end
end

-- The state at path (nil when there is none), or nil, why.
local function load_state(path)
  local info = rw.util.stat(path)
  if not info then return nil end
  if info.type ~= "file" then return nil, ("is not a regular file (a %s)"):format(info.type) end
  local f, err = io.open(path, "r")
  if not f then return nil, ("cannot be read: %s"):format(err) end
  local text = f:read(STATE_MAX + 1) or ""
  f:close()
  if #text > STATE_MAX then return nil, "is larger than 64 KiB: not a state rwup wrote" end
  local ok, st = pcall(json().decode, text)
  if not ok then return nil, ("is not JSON (%s)"):format(tostring(st):gsub("^.-:%d+: ", "")) end
  local why = check_state(st)
  if why then return nil, why end
  return st
end

local function state_refused(path, why)
  return ("state file %s%s%s; delete it, or run with --no-resume to start over"):format(path,
    why:match("^is ") and " " or ": ", why)
end

-- ---------------------------------------------------------------- upload

function M.exit_code_for(err, trap)
  local c = err and err.code
  if trap and trap:caught() then return EXIT.cancelled end
  if c == "rw.retry_budget_exhausted" then return EXIT.budget end
  if c == "gcs.checksum_mismatch" then return EXIT.verify end
  if c == "rw.canceled" then return EXIT.cancelled end
  return EXIT.failed
end

local function sink_for(o, env, gs)
  local metadata = nil
  if o["content-type"] or next(o.metadata) then
    metadata = {}
    if o["content-type"] then metadata.contentType = o["content-type"] end
    if next(o.metadata) then metadata.metadata = o.metadata end
  end
  local opts = { bucket = gs.bucket, object = gs.object, endpoint = o.endpoint, metadata = metadata,
                 if_generation_match = o["if-absent"] and 0 or nil }
  for k, v in pairs(env.sink_options or {}) do opts[k] = v end
  return rw.gcs(opts)
end

local function upload(o, env, run)
  local src, dst = o.src, o.dst
  local ctx = run.ctx
  local size, st, src_abs
  if src.kind == "file" then
    local err
    st, err = rw.util.stat(src.path)
    if not st then return EXIT.failed, err end
    if st.type ~= "file" then
      return EXIT.failed, ("SRC '%s' is a %s: rwup uploads regular files, or - for stdin"):format(src.path, st.type)
    end
    size = st.size
    src_abs = rw.util.realpath(src.path)
  end
  run.total = size
  local wopts = { max_cache_size = o.cache, min_chunk_size = o.chunk, max_chunk_size = o.chunk,
                  checksum = o.checksum, on_progress = run.on_progress, stall_timeout = o["stall-timeout"],
                  retry = o["retry-budget"] and { total_wait = o["retry-budget"],
                                                  max_wait = math.max(0.01, math.min(32, o["retry-budget"] / 4)) } or nil }
  -- Resume: only files (stdin cannot be read again).
  local state_path, state, start = nil, nil, 0
  if src.kind == "file" then
    -- keyed by the endpoint too: a session lives on its endpoint's origin
    local endpoint = o.endpoint or (env.sink_options or {}).endpoint or os.getenv("STORAGE_EMULATOR_HOST")
      or os.getenv("CLOUD_STORAGE_EMULATOR_ENDPOINT")
    state_path = o.state or default_state_path(src_abs, dst.text, endpoint)
    if state_path and not o["no-resume"] then
      local why
      state, why = load_state(state_path)
      if why then return EXIT.failed, state_refused(state_path, why) end
      if state and (state.source ~= src_abs or state.destination ~= dst.text) then
        run.warn(("state file %s is for %s -> %s, not this copy: starting over"):format(
          state_path, tostring(state.source), tostring(state.destination)))
        state = nil
      elseif state and (state.size ~= st.size or state.mtime ~= ("%.9f"):format(st.mtime) or state.ino ~= st.ino) then
        run.warn(("%s changed since the interrupted upload (size %s -> %d, mtime %s -> %.9f): starting over")
          :format(src.path, tostring(state.size), st.size, tostring(state.mtime), st.mtime))
        state = nil
      end
    end
  end
  local bg = rw.context.background()
  local w, err
  if state then
    wopts.sink = sink_for(o, env, dst)
    w, err = rw.resume(bg, { uri = state.uri, persisted = state.persisted, crc32c = state.crc32c }, wopts)
    if w then
      start = state.persisted
      run.resumed = state.persisted
    elseif err and err.code == "gcs.protocol" then
      -- the session URI is off the endpoint's origin: nothing was sent to it
      return EXIT.failed, state_refused(state_path, ("'uri' is not on the endpoint's origin: %s"):format(err.message))
    else
      run.warn(("cannot resume the interrupted upload (%s): starting over"):format(tostring(err)))
    end
  end
  if not w then
    wopts.sink = sink_for(o, env, dst)
    w, err = rw.new(bg, wopts)
    if not w then return M.exit_code_for(err), err end
  end
  run.writer = w
  local function save_state(force)
    if not state_path then return end
    local now = rw.util.monotime()
    if not force and run.last_save and now - run.last_save < 0.25 then return end
    local s = w:session()
    if s then run.session_uri = s.uri end
    if not s or s.persisted == run.saved_persisted then return end
    run.last_save, run.saved_persisted = now, s.persisted
    local dir = state_path:match("^(.*)/[^/]*$")
    if dir and not run.state_dir_made then mkdir_p(dir); run.state_dir_made = true end
    -- the session URI lets anyone holding it write the object: the file is
    -- 0600. Not fsynced: it must survive rwup being killed, which the page
    -- cache does; after a power cut a lost state only means starting over
    -- (and an fsync's journal commit on this thread would stall the upload).
    local ok, e = rw.util.write_private(state_path, json().encode({ version = 1, source = src_abs, destination = dst.text,
      size = st.size, mtime = ("%.9f"):format(st.mtime), ino = st.ino, uri = s.uri, persisted = s.persisted, crc32c = s.crc32c,
      started = run.started }), false)
    if not ok then run.warn(("cannot write the state file %s: %s"):format(state_path, tostring(e))) end
  end
  run.save_state = save_state
  local function stop_on(e)
    -- Cancelled: keep the session (Suspend) and its state for the next run.
    if run.trap:caught() or (e and e.code == "rw.canceled") or
       (e and e.code == "rw.retry_budget_exhausted") then
      local s = w:Suspend()
      if s and state_path then
        run.saved_persisted = nil
        save_state(true)
        run.state_kept = state_path
      end
    else
      w:Abort()
      if state_path then os.remove(state_path); os.remove(state_path .. ".tmp") end
    end
    return M.exit_code_for(e, run.trap), e
  end
  if src.kind == "file" then
    local piece = math.max(o.chunk, 8 * MiB)
    local off = start
    while off < size do
      local n = math.min(piece, size - off)
      local ok, e = w:write_file(off, src.path, off, n, ctx)
      if not ok then return stop_on(e) end
      off = off + n
      local now = rw.util.stat(src.path)
      if not now or now.size ~= st.size or now.mtime ~= st.mtime or now.ino ~= st.ino then
        w:Abort()
        if state_path then os.remove(state_path); os.remove(state_path .. ".tmp") end
        return EXIT.failed, ("%s changed while it was uploaded (size, mtime or inode): nothing was made; upload a file that does not change (a snapshot or a copy)"):format(src.path)
      end
      save_state()
    end
  else
    local off = 0
    while true do
      local data = io.stdin:read(MiB)
      if not data then break end
      local ok, e = w:WriteAt(off, data, ctx)
      if not ok then return stop_on(e) end
      off = off + #data
    end
    run.total = off
  end
  -- Complete in steps of 0.25 s, so that the state file and the progress line
  -- follow the upload (on_progress runs only inside the writer's calls).
  local obj, e
  while true do
    obj, e = w:Complete(ctx:with_timeout(0.25))
    if obj or ctx:err() or (e and e.code ~= "rw.deadline_exceeded") then break end
    run.on_progress(w:stats())
  end
  if not obj then return stop_on(e or ctx:err()) end
  local sess = w:session()
  run.session_uri = sess and sess.uri
  if state_path then os.remove(state_path); os.remove(state_path .. ".tmp") end
  run.object = obj
  w:close()
  return EXIT.ok
end

-- -------------------------------------------------------------- download

local function download(o, env, run)
  if not rw.reader then
    return EXIT.failed, "downloads need rw.reader, which this build of reliablewriter does not have"
  end
  local src, dst = o.src, o.dst
  local gs = { bucket = src.bucket, object = src.object, endpoint = o.endpoint }
  for k, v in pairs(env.sink_options or {}) do gs[k] = v end
  local r, err = rw.reader(run.ctx, { source = rw.gcs(gs) })
  if not r then return M.exit_code_for(err, run.trap), err end
  local meta, serr = r:stat()
  if not meta then r:close(); return M.exit_code_for(serr, run.trap), serr end
  run.total = tonumber(meta.size)
  if run.prog then run.prog.total = run.total end
  -- The read in one coroutine, the progress line in another: the workgroup
  -- runs both on this thread (the read yields while the pool works).
  local ok, e
  local wg = rw.workgroup.new { ctx = run.ctx }
  local done = false
  wg:go(function()
    if dst.kind == "std" then
      ok, e = r:read_all(function(piece) io.stdout:write(piece) end, run.ctx)
    else
      ok, e = r:read_to_file(dst.path, nil, nil, run.ctx)
    end
    done = true
  end)
  if run.prog then
    wg:go(function()
      while not done and not run.ctx:wait(0.25) do
        local st = r:stats()
        run.prog.update(st.bytes, st.retries)
      end
    end)
  end
  wg:wait()
  local stats = r:stats()
  run.stats = { retries = stats.retries, persisted = stats.bytes }
  run.bytes = stats and stats.bytes or run.total
  r:close()
  if not ok then return M.exit_code_for(e, run.trap), e end
  run.object = meta
  return EXIT.ok
end

-- ------------------------------------------------------------------ main

-- main(argv [, env]): the exit code. env (for tests and the demo):
-- stdout, stderr (file handles), sink_options (extra rw.gcs options, e.g.
-- the test bed's faults), is_tty (overrides the terminal check), report (a
-- table main fills: stats (the writer's last), object, seconds, error).
function M.main(argv, env)
  env = env or {}
  local stdout, stderr = env.stdout or io.stdout, env.stderr or io.stderr
  local ok, o = pcall(M.parse_args, argv)
  if not ok then
    if type(o) == "table" and o.usage then
      stderr:write("rwup: ", o.usage, "\n", M.USAGE, "\n")
      return EXIT.usage
    end
    stderr:write("rwup: ", tostring(o), "\n")
    return EXIT.usage
  end
  if o.help then stdout:write(M.USAGE, "\n"); return EXIT.ok end
  local mode = o.progress
  local tty = env.is_tty
  if tty == nil then tty = rw.util.isatty(2) end
  if o.quiet then mode = "none"
  elseif mode == "auto" then mode = tty and "bar" or "none" end
  -- where JSON lines go: stdout, unless the data does
  local jout = o.dst.kind == "std" and stderr or stdout
  local trap <close> = assert(rw.util.trap_signals({ "INT", "TERM" }))
  rw.log.capture("info")
  local run = { ctx = trap:context(), trap = trap, started = iso(rw.util.realtime()),
                t0 = rw.util.monotime(), errors = {} }
  local prog
  function run.warn(msg)
    if prog then prog.clear() end
    stderr:write("rwup: warning: ", msg, "\n")
  end
  run.on_progress = function(s)
    run.stats = s
    local code = drain_log(prog, stderr, run)
    if prog then prog.update(s.persisted, s.retries, code) end
    if run.save_state then run.save_state() end
  end
  local code, err
  local pok, perr = pcall(function()
    prog = (mode ~= "none") and new_progress(mode, mode == "json" and jout or stderr, nil) or nil
    run.prog = prog
    if o.src.kind == "gs" then
      code, err = download(o, env, run)
    else
      local total
      if o.src.kind == "file" then
        local st = rw.util.stat(o.src.path)
        total = st and st.size
      end
      if prog then prog.total = total end
      code, err = upload(o, env, run)
    end
  end)
  if not pok then code, err = EXIT.failed, perr end
  drain_log(prog, stderr, run)
  rw.log.stop()
  local elapsed = rw.util.monotime() - run.t0
  local s = run.stats or {}
  local bytes = (run.object and tonumber(run.object.size)) or s.persisted or run.bytes or 0
  if prog then
    if code == EXIT.ok then prog.update(bytes, s.retries, nil, true) end
    prog.clear()
  end
  local result = code == EXIT.ok and "OK" or (code == EXIT.cancelled and "cancelled" or "error")
  local what = ("%s -> %s"):format(o.src.text, o.dst.text)
  if code == EXIT.ok then
    local obj = run.object or {}
    if mode == "json" then
      jout:write(json().encode({ event = "done", source = o.src.text, destination = o.dst.text, bytes = bytes,
        seconds = math.floor(elapsed * 1000) / 1000, retries = s.retries or 0, crc32c = obj.crc32c,
        md5 = obj.md5Hash, generation = obj.generation, resumed_from = run.resumed }), "\n")
    elseif not o.quiet then
      stderr:write(("rwup: %s: %s in %.1f s (%.1f MiB/s)%s, %d retries%s%s\n"):format(what, fmt_bytes(bytes),
        elapsed, elapsed > 0 and bytes / MiB / elapsed or 0,
        run.resumed and (", resumed at " .. fmt_bytes(run.resumed)) or "", s.retries or 0,
        obj.crc32c and (", crc32c " .. obj.crc32c) or "", obj.generation and (", generation " .. obj.generation) or ""))
    end
  else
    local msg = type(err) == "string" and err or tostring(err)
    if mode == "json" then
      jout:write(json().encode({ event = "error", source = o.src.text, destination = o.dst.text, exit = code,
        code = type(err) ~= "string" and err and err.code or nil, id = type(err) ~= "string" and err and err.id or nil,
        message = msg, state = run.state_kept }), "\n")
    end
    stderr:write(("rwup: %s failed: %s\n"):format(what, msg))
    local final_id = type(err) ~= "string" and err and err.id
    for _, l in ipairs(run.errors) do
      if not (final_id and l:find("id=" .. final_id, 1, true)) then stderr:write(l, l:sub(-1) == "\n" and "" or "\n") end
    end
    if run.state_kept then
      stderr:write(("rwup: state kept in %s: run the same command again to resume\n"):format(run.state_kept))
    end
  end
  if o.manifest then
    local obj = run.object or {}
    local new = not io.open(o.manifest, "r")
    local f = io.open(o.manifest, "a")
    if f then
      if new then
        f:write("Source,Destination,Size,CRC32C,MD5,Session,Start,End,Retries,Result,Description\n")
      end
      f:write(csv(o.src.text, o.dst.text, bytes, obj.crc32c, obj.md5Hash, run.session_uri, run.started,
                  iso(rw.util.realtime()), s.retries or 0, result,
                  code ~= EXIT.ok and (type(err) == "string" and err or tostring(err)) or ""), "\n")
      f:close()
    else
      stderr:write(("rwup: warning: cannot append to the manifest %s\n"):format(o.manifest))
    end
  end
  if run.writer and code == EXIT.ok then pcall(run.writer.close, run.writer) end
  if env.report then
    env.report.stats, env.report.object, env.report.seconds, env.report.error = run.stats, run.object, elapsed, err
  end
  return code
end

return M
