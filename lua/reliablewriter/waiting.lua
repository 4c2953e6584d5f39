-- How a Lua thread waits (DESIGN.md "Waiting"): every waitable offers
-- poll() / pollfd() / timeout() and a blocking wait; this module picks the
-- policy for the running code:
--   * inside a workgroup task (a coroutine the scheduler runs): yield to it;
--   * under OpenResty in a phase that can yield: poll + ngx.sleep (1 ms .. 50 ms);
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

-- Waits until ready() is true, ctx is done, or `seconds` (nil = no limit).
-- w: { ready = fn() -> bool, fds = {fd...}, timeout = fn() -> seconds|nil,
--      block = fn(seconds|nil) (a blocking wait; may return early) }
-- Returns "ready", "timeout" or "done" (ctx).
function M.wait_for(w, ctx, seconds)
  local deadline = seconds and (util.monotime() + seconds) or nil
  local policy = M.policy()
  local step = 0.001
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
      local s = step
      if t and t < s then s = t end
      rawget(_G, "ngx").sleep(s)
      step = math.min(step * 2, 0.05)
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
