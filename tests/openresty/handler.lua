-- Test harness around examples/openresty/rw_upload.lua: runs the example
-- unchanged, and records what the test checks in the error log
-- ("rwtest: ..." lines, written in the log phase by log()):
--   * how many times, and how long, the waiting policy slept with ngx.sleep;
--   * the writer's session URI and state (to check that Abort cancelled it);
--   * how long w:Abort() held the worker.
-- $rw_mode = "sleep" makes the ngx policy poll with ngx.sleep (no wake-up
-- bridge) for this request (the worker's other requests too, meanwhile).
-- $rw_mode = "block" forces the blocking waiting policy for this request: the
-- negative control, showing that the latency probe does catch a blocked worker.
local M = {}

local rw, waiting

local function install()
  if rw then return end
  rw = require "reliablewriter"
  waiting = require "reliablewriter.waiting"
  -- Count the ngx policy's waits per request: "sleep" (ngx.sleep polls) and
  -- "wake" (waits on the wake-up bridge's cosocket).
  waiting.ngx_wakeup.on_wait = function(kind, s)
    local c = ngx.ctx
    if kind == "sleep" then
      c.rw_sleeps = (c.rw_sleeps or 0) + 1
      c.rw_slept = (c.rw_slept or 0) + s
    else
      c.rw_wakes = (c.rw_wakes or 0) + 1
    end
  end
  -- Remember the writer of the request.
  local new = rw.new
  rw.new = function(...)
    local w, err = new(...)
    ngx.ctx.rw_writer = w
    return w, err
  end
  -- Time Abort: it runs in C on the worker's thread.
  local methods = rw.core.writer.methods
  local abort = methods.Abort
  methods.Abort = function(w, ...)
    ngx.update_time()
    local t0 = ngx.now()
    local s = w:_is_closed() and nil or w:session()
    ngx.ctx.rw_session = s and s.uri
    local r = abort(w, ...)
    ngx.update_time()
    ngx.ctx.rw_abort_ms = (ngx.now() - t0) * 1000
    return r
  end
end

function M.content()
  install()
  local mode = ngx.var.rw_mode
  local forced = mode == "block"
  local policy = waiting.policy
  if forced then waiting.policy = function() return "block" end end
  if mode == "sleep" then waiting.ngx_wakeup.disabled = true end
  local ok, err = pcall(require("rw_upload").handle)
  if forced then waiting.policy = policy end
  if mode == "sleep" then waiting.ngx_wakeup.disabled = false end
  if not ok then error(err, 0) end
end

function M.log()
  local c = ngx.ctx
  local w = c.rw_writer
  local state = "none"
  if w and not w:_is_closed() then
    local st = w:stats()
    state = st and st.state or "?"
    if not c.rw_session then
      local s = w:session()
      c.rw_session = s and s.uri
    end
  elseif w then
    state = "closed"
  end
  ngx.log(ngx.WARN, string.format("rwtest: uri=%s status=%d sleeps=%d slept_ms=%.1f wakes=%d state=%s abort_ms=%s session=%s",
    ngx.var.uri, ngx.status, c.rw_sleeps or 0, (c.rw_slept or 0) * 1000, c.rw_wakes or 0, state,
    c.rw_abort_ms and string.format("%.1f", c.rw_abort_ms) or "-", c.rw_session or "-"))
end

return M
