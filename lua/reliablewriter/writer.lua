-- The writer's module functions: rw.new, rw.resume, the sink descriptors
-- (rw.gcs, rw.file, rw.proxy_sink) and the process memory budget. The writer's methods
-- (WriteAt, write_file, Complete, Abort, poll, wait, ...) are all defined by
-- its C binding (csrc/lua/l_writer.c); on_progress is kept there too.
local W = {}

function W.install(M, core)
  local cw = core.writer

  local function argerror(n, fname, msg)
    error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
  end

  M.set_memory_budget = cw.set_memory_budget
  M.memory_budget = cw.memory_budget

  local sinks = core.sinks
  M.gcs = sinks.gcs
  M.file = sinks.file
  M.proxy_sink = core.proxy_sink

  -- rw.new(ctx, opts): a ready writer, or nil, err.
  function M.new(ctx, opts)
    if not core.context.is_context(ctx) then argerror(1, "new", "context expected, got " .. type(ctx)) end
    if type(opts) ~= "table" then argerror(2, "new", "options table expected, got " .. type(opts)) end
    local on_progress = opts.on_progress
    if on_progress ~= nil and type(on_progress) ~= "function" then
      argerror(2, "new", "option 'on_progress' must be a function")
    end
    if opts.connect_timeout ~= nil and sinks.is_sink(opts.sink) then
      local o = {}
      for k, v in pairs(opts) do o[k] = v end
      o.sink = sinks.derive(opts.sink, { connect_timeout = opts.connect_timeout })
      opts = o
    end
    return cw.new(ctx, opts)
  end

  -- rw.resume(ctx, session, opts): continues an upload from w:session() or
  -- w:Suspend(). opts.sink must be an rw.gcs{} descriptor; the session's uri
  -- is used. The writer asks the server what it holds before sending: bytes
  -- it holds beyond session.persisted are taken from the caller (hashed, not
  -- resent), and a finalized session yields its object once they match.
  local function check_session(session)
    if type(session) ~= "table" then
      argerror(2, "resume", "session table {uri=, persisted=, crc32c=} expected (from w:session()), got " .. type(session))
    end
    if type(session.uri) ~= "string" or session.uri == "" then
      argerror(2, "resume", "session.uri must be the non-empty session URI from w:session() (got " .. tostring(session.uri) .. ")")
    end
    local p = session.persisted
    if type(p) ~= "number" or p ~= p or p < 0 or p % 1 ~= 0 or p > 2 ^ 53 then
      argerror(2, "resume", "session.persisted must be a whole number >= 0 (got " .. tostring(p) .. ")")
    end
    local c = session.crc32c
    if c ~= nil and (type(c) ~= "string" or #c ~= 8 or not c:match("^[%w+/][%w+/][%w+/][%w+/][%w+/][AQgw]==$")) then
      argerror(2, "resume", "session.crc32c must be the base64 CRC32C of the persisted bytes, as w:session() gives it (got " .. tostring(c) .. ")")
    end
  end

  function M.resume(ctx, session, opts)
    if not core.context.is_context(ctx) then argerror(1, "resume", "context expected, got " .. type(ctx)) end
    check_session(session)
    if type(opts) ~= "table" then argerror(3, "resume", "options table with a sink expected, got " .. type(opts)) end
    local kind = sinks.is_sink(opts.sink) and opts.sink:kind()
    if kind ~= "gcs" and kind ~= "proxy" then
      argerror(3, "resume", "option 'sink' must be an rw.gcs{...} or rw.proxy_sink{...} sink: only GCS sessions can be resumed")
    end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.sink = kind == "proxy" and opts.sink:with_session(session.uri) or sinks.with_session(opts.sink, session.uri)
    return cw.new(ctx, o, session)
  end
end

return W
