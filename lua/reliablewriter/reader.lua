-- The ReliableReader's Lua methods: ReadAt, read_to_file, read_all, stat.
-- The C object (core.reader, csrc/io/reader.c) does the work on the pool;
-- each read is an op this file waits for through the waiting policy (block,
-- yield to a workgroup, ngx.sleep), so ReadAt calls from several coroutines
-- run at once.
local R = {}

local PIECE = 8 * 1024 * 1024 -- read_all's piece

function R.install(M, core, waiting)
  local cr = core.reader
  local methods = cr.methods
  local errors = core.errors

  local function argerror(n, fname, msg)
    error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
  end

  local function check_count(v, n, fname, what)
    if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v > 2 ^ 53 then
      argerror(n, fname, what .. " must be a whole number >= 0 (got " .. tostring(v) .. ")")
    end
  end

  local function check_ctx(ctx, n, fname)
    if ctx ~= nil and not core.context.is_context(ctx) then
      argerror(n, fname, "context expected, got " .. type(ctx))
    end
  end

  local function check_open(r)
    if r:_is_closed() then error("attempt to use a closed reader", 3) end
  end

  -- reader -> its source descriptor when that has a token_fn (issue 11): the
  -- function runs here, on the Lua thread, when the credential wants a token;
  -- waits then wake every 50 ms to serve it.
  local token_sources = setmetatable({}, { __mode = "k" })
  local function serve_token(r)
    local ts = token_sources[r]
    if ts then ts:_serve_token() end
  end

  -- Waits for op; the caller's ctx ending cancels it. Returns op:_result(...).
  local function finish(r, op, ctx, full_check_reader)
    serve_token(r)
    local w = {
      ready = function() serve_token(r); return op:_done() end,
      fds = { op:pollfd() },
      timeout = function() return token_sources[r] and 0.05 or nil end,
      block = function(t) op:_wait_blocking(t, ctx) end,
    }
    local r = waiting.wait_for(w, ctx, nil)
    if r == "done" and not op:_done() then
      local err = ctx:err()
      op:cancel(err)
      return nil, err
    end
    return op:_result(full_check_reader)
  end

  -- ReadAt(offset, length [, ctx]): exactly length bytes, or nil, err.
  function methods.ReadAt(r, offset, length, ctx)
    check_open(r)
    check_count(offset, 1, "ReadAt", "offset")
    check_count(length, 2, "ReadAt", "length")
    check_ctx(ctx, 3, "ReadAt")
    local op, err = r:_start(offset, length)
    if not op then return nil, err end
    return finish(r, op, ctx)
  end

  -- stat([ctx]): the pinned generation's metadata (pins it on first use).
  function methods.stat(r, ctx)
    check_open(r)
    check_ctx(ctx, 1, "stat")
    local op, err = r:_start(0, 0)
    if not op then return nil, err end
    local ok, e = finish(r, op, ctx)
    if not ok then return nil, e end
    return r:_meta()
  end

  -- read_to_file(path [, offset [, length [, ctx]]]): true, or nil, err.
  -- A temporary file beside path is renamed over it at the end; a full read
  -- is checked against the object's CRC32C; on failure no file is left.
  function methods.read_to_file(r, path, offset, length, ctx)
    check_open(r)
    if type(path) ~= "string" or path == "" then argerror(1, "read_to_file", "path must be a non-empty string") end
    offset = offset or 0
    check_count(offset, 2, "read_to_file", "offset")
    if length ~= nil then check_count(length, 3, "read_to_file", "length") end
    check_ctx(ctx, 4, "read_to_file")
    if length == nil then
      local meta, err = methods.stat(r, ctx)
      if not meta then return nil, err end
      length = meta.size - offset
      if length < 0 then length = 0 end -- the read names the size
      if offset > meta.size then length = 0 end
    end
    local op, err = r:_start_file(path, offset, length)
    if not op then return nil, err end
    return finish(r, op, ctx, r)
  end

  -- read_all(fn [, ctx]): calls fn(piece) for the whole object in order
  -- (pieces of at most 8 MiB), then checks the CRC32C: true, or nil, err.
  -- fn returning false (or raising) stops the read.
  function methods.read_all(r, fn, ctx)
    check_open(r)
    if type(fn) ~= "function" then argerror(1, "read_all", "function expected, got " .. type(fn)) end
    check_ctx(ctx, 2, "read_all")
    local meta, err = methods.stat(r, ctx)
    if not meta then return nil, err end
    local crc, off = 0, 0
    while off < meta.size do
      local n = math.min(PIECE, meta.size - off)
      local s, e = methods.ReadAt(r, off, n, ctx)
      if not s then return nil, e end
      crc = cr.crc32c(s, crc)
      off = off + n
      if fn(s) == false then
        return nil, errors.new { code = "rw.canceled", message = ("read_all of %s stopped by its function at byte %d"):format(tostring(r), off) }
      end
    end
    if meta.crc32c and cr.crc32c_base64(crc) ~= meta.crc32c then
      return nil, errors.new { code = "gcs.checksum_mismatch",
        message = ("read_all: the bytes' CRC32C is %s, the object's metadata (generation %s) says %s"):format(
          cr.crc32c_base64(crc), meta.generation, meta.crc32c) }
    end
    return true
  end

  -- rw.reader(ctx, { source = rw.gcs{...}, hedge_after =, max_hedges =, ... })
  function M.reader(ctx, opts)
    if not core.context.is_context(ctx) then argerror(1, "reader", "context expected, got " .. type(ctx)) end
    if type(opts) ~= "table" then argerror(2, "reader", "options table expected, got " .. type(opts)) end
    local r, err = cr.new(ctx, opts)
    if not r then return nil, err end
    local src = opts.source
    local ok, has = pcall(function() return src:_has_token_fn() end)
    if ok and has then
      token_sources[r] = src
      serve_token(r)
    end
    return r
  end
end

return R
