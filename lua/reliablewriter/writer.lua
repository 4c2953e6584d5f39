-- The writer's Lua methods: WriteAt, Complete, Abort, write_file, poll/wait.
-- The C object does the work in steps; this file loops and waits through the
-- waiting policy, and runs on_progress on the Lua thread.
local W = {}

function W.install(M, core, waiting)
  local cw = core.writer
  local methods = cw.methods
  local errors = core.errors
  local progress_fns = setmetatable({}, { __mode = "k" })
  -- writer -> its sink descriptor when that has a token_fn (issue 11): the
  -- function is called here, on the Lua thread, when the sink needs a token.
  local token_sinks = setmetatable({}, { __mode = "k" })

  local function argerror(n, fname, msg)
    error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
  end

  local function check_offset(v, n, fname)
    if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v > 2 ^ 53 then
      argerror(n, fname, "offset must be a whole number >= 0 (got " .. tostring(v) .. ")")
    end
  end

  local function check_ctx(ctx, n, fname)
    if ctx ~= nil and not core.context.is_context(ctx) then
      argerror(n, fname, "context expected, got " .. type(ctx))
    end
  end

  -- Drops confirmed references and reports progress (on this thread).
  local function has_token_fn(sink)
    local ok, f = pcall(function() return sink._has_token_fn end)
    return ok and f ~= nil and sink:_has_token_fn()
  end

  local function pump(w)
    local ts = token_sinks[w]
    if ts then ts:_serve_token() end
    if w:_drain() then
      local fn = progress_fns[w]
      if fn then fn(w:stats()) end
    end
  end

  local function waiter(w, want_room, off, ctx)
    return {
      ready = function()
        pump(w)
        if w:_failed() then return true end
        if want_room then return w:_room(off) > 0 end
        return w:_finished()
      end,
      fds = { w:pollfd() },
      -- room freed by other writers under the process budget is not signalled
      timeout = function()
        if token_sinks[w] then return 0.05 end -- wakes to serve tokens
        return (want_room and cw.memory_budget().limit > 0) and 0.02 or nil
      end,
      block = function(t) w:_wait_blocking(want_room, off, t, ctx) end,
    }
  end

  local function wait_room(w, off, ctx)
    local r = waiting.wait_for(waiter(w, true, off, ctx), ctx, nil)
    if r == "done" then return nil, ctx:err() end
    local err = w:_failed()
    if err then return nil, err end
    return true
  end

  -- WriteAt(offset, data [, ctx]): true, or nil, err. Waits (honouring ctx and
  -- the writer's context) while the cache is full.
  function methods.WriteAt(w, offset, data, ctx)
    if w:_is_closed() then error("attempt to use a closed writer", 2) end
    check_offset(offset, 1, "WriteAt")
    if type(data) ~= "string" then argerror(2, "WriteAt", "string expected, got " .. type(data)) end
    check_ctx(ctx, 3, "WriteAt")
    ctx = ctx or w:_ctx()
    local from, len = 1, #data
    pump(w)
    repeat
      local n, err = w:_write_some(offset, data, from)
      if not n then return nil, err end
      from = n + 1
      if from <= len then
        local ok, e = wait_room(w, offset + from - 1, ctx)
        if not ok then return nil, e end
      end
    until from > len
    return true
  end

  -- write_file(offset, path [, file_offset [, length]]): feeds a regular file
  -- into the cache, read by C into buffers the writer owns (never through Lua
  -- strings, never mapped). A FIFO, device, socket, directory or /proc-like
  -- file is nil, rw.invalid_argument (the writer is untouched); a file that
  -- changes while it is read is nil, rw.source_changed, and the writer fails
  -- with that error, so that no object is ever made from a file read partly
  -- before and partly after a change (Complete returns it too).
  function methods.write_file(w, offset, path, file_offset, length, ctx)
    if w:_is_closed() then error("attempt to use a closed writer", 2) end
    check_offset(offset, 1, "write_file")
    if type(path) ~= "string" then argerror(2, "write_file", "path must be a string") end
    file_offset = file_offset or 0
    check_offset(file_offset, 3, "write_file")
    if length ~= nil then check_offset(length, 4, "write_file") end
    check_ctx(ctx, 5, "write_file")
    local size, src = w:_file_size(path)
    if not size then return nil, src end
    if file_offset > size then
      src:close()
      argerror(3, "write_file", ("file_offset %d is past the end of '%s' (%d bytes)"):format(file_offset, path, size))
    end
    length = length or (size - file_offset)
    if file_offset + length > size then
      src:close()
      argerror(4, "write_file", ("length %d from %d is past the end of '%s' (%d bytes)"):format(length, file_offset, path, size))
    end
    ctx = ctx or w:_ctx()
    local done = 0
    pump(w)
    while done < length do
      local n, e = w:_write_file_some(offset + done, src, file_offset + done, length - done)
      if not n then
        src:close()
        return nil, e
      end
      done = done + n
      if done < length then
        local ok, e2 = wait_room(w, offset + done, ctx)
        if not ok then src:close(); return nil, e2 end
      end
    end
    src:close()
    return true
  end

  -- Complete([ctx]): the object's metadata, or nil, err.
  function methods.Complete(w, ctx, total)
    if w:_is_closed() then error("attempt to use a closed writer", 2) end
    check_ctx(ctx, 1, "Complete")
    ctx = ctx or w:_ctx()
    pump(w)
    local ok, err = w:_complete_start(total)
    if not ok then return nil, err end
    local r = waiting.wait_for(waiter(w, false, 0, ctx), ctx, nil)
    pump(w)
    if r == "done" and not w:_finished() then
      -- the caller's context ended, not the upload: it goes on, and Complete
      -- may be called again (or Abort)
      return nil, ctx:err()
    end
    return w:_result()
  end

  -- Abort([ctx]): cancels, deletes the session (best effort, abort_timeout),
  -- joins the work. Idempotent. Under an event loop the deletion runs on the
  -- pool while this thread yields or sleeps.
  function methods.Abort(w, ctx)
    check_ctx(ctx, 1, "Abort")
    if w:_is_closed() then return true end
    if waiting.policy() == "block" then
      w:_abort()
    else
      w:_abort_start()
      waiting.wait_for({
        ready = function() return w:_stopped() end,
        fds = { w:pollfd() },
        timeout = function() return nil end,
        block = function(t) w:_wait_blocking(false, 0, t) end,
      }, nil, nil)
    end
    pump(w)
    return true
  end

  -- poll(): never blocks. true when nothing is pending (or done), false while
  -- completing, nil, err once failed.
  function methods.poll(w)
    pump(w)
    local err = w:_failed()
    if err then return nil, err end
    local st = w:stats().state
    if st == "completing" then return w:_finished() end
    return true
  end

  function methods.timeout(w) return nil end

  -- wait([timeout]): blocks (or yields) until the pending Complete finishes.
  function methods.wait(w, timeout)
    local r = waiting.wait_for(waiter(w, false, 0, nil), nil, timeout)
    pump(w)
    return r == "ready"
  end

  cw.metatable.__close = function(w)
    if not w:_is_closed() then w:close() end
  end
  cw.metatable.__name = "reliablewriter.Writer"

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
    local w, err = cw.new(ctx, opts)
    if not w then return nil, err end
    progress_fns[w] = on_progress
    if has_token_fn(opts.sink) then token_sinks[w] = opts.sink end
    return w
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
    local on_progress = o.on_progress
    o.on_progress = nil
    local w, err = cw.new(ctx, o, session)
    if not w then return nil, err end
    progress_fns[w] = on_progress
    if has_token_fn(o.sink) then token_sinks[w] = o.sink end
    return w
  end
end

return W
