-- How a Lua thread waits (DESIGN.md "Waiting"): every waitable offers
-- poll() / pollfd() / timeout() and a blocking wait; this module picks the
-- policy for the running code:
--   * inside a workgroup task (a coroutine the scheduler runs): yield to it;
--   * under OpenResty in a phase that can yield: the waitable's fd, bridged to
--     a cosocket (see "ngx" below); poll + ngx.sleep (1 ms .. 50 ms) when the
--     waitable has no fd or the bridge cannot be used;
--   * otherwise: block in C.
local core = require "reliablewriter.core"
local util = core.util

local M = {}

-- coroutine -> scheduler; weak keys so finished coroutines go away.
local schedulers = setmetatable({}, { __mode = "k" })
M.schedulers = schedulers

local YIELD_TAG = {} -- marks our yields apart from a task's own
M.YIELD_TAG = YIELD_TAG
-- The scheduler resumes a waiting task with (ABORT_TAG, err) when it has
-- failed itself: the wait raises err, so the task ends.
local ABORT_TAG = {}
M.ABORT_TAG = ABORT_TAG

local ngx_yieldable = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, preread = true,
}

local function in_scheduler()
  local co, main = coroutine.running()
  if co and not main and schedulers[co] then return true end
  return false
end

local function ngx_can_yield()
  local ngx = rawget(_G, "ngx")
  if not ngx or type(ngx.get_phase) ~= "function" then return false end
  return ngx_yieldable[ngx.get_phase()] == true
end

function M.policy()
  if in_scheduler() then return "yield" end
  if ngx_can_yield() then return "ngx" end
  return "block"
end

-- ---- the ngx policy ----
-- An nginx worker can wait without blocking only on what its event loop
-- watches: timers (ngx.sleep) and cosockets. A waitable's fd is an eventfd,
-- which a cosocket cannot wait on; so a wake-up bridge (core.wakeup, one per
-- worker, made on first use, its thread started on the first wait) watches
-- the fd and writes a byte on a unix connection that this light thread reads
-- with ngx.socket.tcp: the wait ends as soon as the C side signals, instead
-- of at the next ngx.sleep tick (up to 50 ms later). One connection per
-- light thread of a request, kept in ngx.ctx for its later waits; nginx
-- closes it when the request ends (or is killed mid-wait), and the bridge
-- then drops the slot by itself.
-- M.ngx_wakeup: .disabled = true forces ngx.sleep polling; .dir the socket's
-- folder (nil: $TMPDIR or /tmp); .on_wait(kind, seconds) is called for each
-- wait ("wake", "sleep"), for tests and measurements; .failed holds the
-- error that made the bridge unusable (then ngx.sleep is used).
local ngx_wakeup = { disabled = false, dir = nil, on_wait = nil, failed = nil, bridge = nil }
M.ngx_wakeup = ngx_wakeup
local NGX_MAX_WAIT = 0.25 -- a bound per wait: a caller's ctx cancelled elsewhere is seen by then
local NGX_SPIN = 3        -- wakes in a row that found nothing ready: then sleep once
local NGX_SPIN_MAX_SLEEP = 0.01

local function ngx_bridge(ngx)
  if ngx_wakeup.disabled or ngx_wakeup.failed or not core.wakeup then return nil end
  if not ngx_wakeup.bridge then
    local b, err = core.wakeup.new(ngx_wakeup.dir)
    if not b then
      ngx_wakeup.failed = err
      ngx.log(ngx.WARN, "reliablewriter: no wake-up bridge (waiting with ngx.sleep): ", tostring(err))
      return nil
    end
    ngx_wakeup.bridge = b
  end
  return ngx_wakeup.bridge
end

-- A bridge connection for one wait: { b, id, sock }, or nil (then sleep).
local function ngx_attach(ngx, fd)
  local b = fd and ngx_bridge(ngx)
  if not b then return nil end
  local id, tok = b:register()
  if not id then return nil end
  local ok, sock = pcall(ngx.socket.tcp) -- not in every phase
  local done = ok and sock and sock:connect("unix:" .. b:path())
  done = done and sock:send(tok) and b:bind(id)
  if not done then
    b:release(id)
    if ok and sock then sock:close() end
    return nil
  end
  return { b = b, id = id, sock = sock }
end

local function ngx_detach(c)
  if not c then return end
  c.b:release(c.id)
  c.sock:close()
  if c.cache then c.cache[c.co] = nil end
end

-- The light thread's connection from ngx.ctx, or a new one kept there.
local CONN_KEY = {}
local function ngx_conn(ngx, fd)
  local ok, ctx = pcall(function() return ngx.ctx end)
  if not ok or type(ctx) ~= "table" then return nil end -- then ngx.sleep
  local co = coroutine.running()
  local cache = rawget(ctx, CONN_KEY)
  local c = cache and cache[co]
  if c and c.b == ngx_wakeup.bridge then return c end
  c = ngx_attach(ngx, fd)
  if c then
    if not cache then
      cache = setmetatable({}, { __mode = "k" })
      rawset(ctx, CONN_KEY, cache)
    end
    c.cache, c.co = cache, co
    cache[co] = c
  end
  return c
end

-- One wait of at most s seconds on the bridge; false when the connection
-- broke (the caller falls back to sleeping).
local function ngx_wake_once(c, fd, s)
  local ok = c.b:arm(c.id, fd)
  if not ok then return false end
  c.sock:settimeout(math.max(1, math.floor(s * 1000)))
  local data, err = c.sock:receiveany(64)
  if not data and err ~= "timeout" then return false end
  return true
end

local function ngx_wait(st, w, t)
  local ngx = rawget(_G, "ngx")
  local fd = w.fds and w.fds[1]
  if st.conn == nil then st.conn = fd and ngx_conn(ngx, fd) or false end
  if st.conn and st.spins < NGX_SPIN then
    local s = math.min(t or NGX_MAX_WAIT, NGX_MAX_WAIT)
    ngx.update_time()
    local t0 = ngx.now()
    if ngx_wake_once(st.conn, fd, s) then
      if ngx_wakeup.on_wait then ngx_wakeup.on_wait("wake", s) end
      ngx.update_time()
      st.spins = (ngx.now() - t0 < 0.001) and st.spins + 1 or 0
      return
    end
    ngx_detach(st.conn)
    st.conn = false
  end
  -- no bridge, or it keeps waking at once (an fd nobody drains, as while
  -- Abort waits): sleep a tick, growing to 50 ms (10 ms when spinning, so
  -- that the end is still seen soon)
  local cap = st.spins > 0 and NGX_SPIN_MAX_SLEEP or 0.05
  st.spins = 0
  local s = math.min(st.step, cap)
  if t and t < s then s = t end
  if ngx_wakeup.on_wait then ngx_wakeup.on_wait("sleep", s) end
  ngx.sleep(s)
  st.step = math.min(st.step * 2, 0.05)
end

-- Waits until ready() is true, ctx is done, or `seconds` (nil = no limit).
-- w: { ready = fn() -> bool, fds = {fd...}, timeout = fn() -> seconds|nil,
--      block = fn(seconds|nil) (a blocking wait; may return early) }
-- Returns "ready", "timeout" or "done" (ctx).
function M.wait_for(w, ctx, seconds)
  local deadline = seconds and (util.monotime() + seconds) or nil
  local policy = M.policy()
  local ngx_st = { step = 0.001, spins = 0 } -- the ngx policy's state
  while true do
    if w.ready() then return "ready" end
    if ctx and ctx:done() then return "done" end
    local now = util.monotime()
    if deadline and now >= deadline then return "timeout" end
    local left = deadline and (deadline - now) or nil
    local t = w.timeout and w.timeout() or nil
    if ctx then
      local ct = ctx:timeout()
      if ct and (not t or ct < t) then t = ct end
    end
    if left and (not t or left < t) then t = left end
    if policy == "yield" then
      -- the scheduler watches w.fds and ctx (a cancelled ctx wakes it without
      -- an fd) and wakes us after t seconds; then we look again
      local sig, err = coroutine.yield(YIELD_TAG, w, ctx, t)
      if sig == ABORT_TAG then error(err, 0) end
    elseif policy == "ngx" then
      ngx_wait(ngx_st, w, t)
    else
      w.block(t)
    end
  end
end

-- Sleeps `seconds`, waking at once when ctx is cancelled.
-- Returns true, or nil, ctx's error.
function M.sleep(ctx, seconds)
  local until_t = util.monotime() + seconds
  local w = {
    ready = function() return util.monotime() >= until_t end,
    fds = {}, -- ctx is watched by whoever waits (no eventfd made for it)
    timeout = function() return math.max(0, until_t - util.monotime()) end,
    block = function(t)
      t = t or math.max(0, until_t - util.monotime())
      if ctx then ctx:wait_blocking(t) else util.sleep(t) end
    end,
  }
  local r = M.wait_for(w, ctx, nil)
  if r == "done" then return nil, ctx:err() end
  return true
end

-- The C side's waiting methods (csrc/lua/l_wait.h) call run(step, ...): a
-- step returns the method's results, or WAIT and an op to wait on with
-- wait_for above; the op's resume(op, why) is the next step.
local protocol = core.wait_protocol
local WAIT = protocol.WAIT

local function drive(...)
  local tag, op = ...
  if tag ~= WAIT then return ... end
  local w = {
    ready = function() return op.ready(op) end,
    fds = op.fds,
    timeout = op.timeout and function() return op.timeout(op) end or nil,
    block = function(t) return op.block(op, t) end,
  }
  return drive(op.resume(op, M.wait_for(w, op.ctx, op.seconds)))
end

function M.run(step, ...) return drive(step(...)) end
protocol.run = M.run

return M
