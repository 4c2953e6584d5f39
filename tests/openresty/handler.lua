-- Test harness around examples/openresty/rw_upload.lua: runs the example
-- unchanged, and records what the test checks in the error log
-- ("rwtest: ..." lines, written in the log phase by log()):
--   * how many times, and how long, the waiting policy slept with ngx.sleep;
--   * the writer's session URI and state (to check that Abort cancelled it);
--   * how long w:Abort() held the worker.
-- $rw_mode = "sleep" makes the ngx policy poll with ngx.sleep (no wake-up
-- bridge) for this request (the worker's other requests too, meanwhile).
-- $rw_mode = "nobridge" closes the worker's wake-up bridge and points the
-- next one at a folder that does not exist (the fallback to ngx.sleep).
-- $rw_mode = "block" forces the blocking waiting policy for this request: the
-- negative control, showing that the latency probe does catch a blocked worker.
local M = { calls = {} }

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
  -- Time every call into the writer's C methods and rw.new on the worker's
  -- thread (M.calls: name -> { n, max_ms }): nothing there may block.
  local methods = rw.core.writer.methods
  local monotime = rw.util.monotime
  local function timed(name, fn)
    local st = { n = 0, max_ms = 0 }
    M.calls[name] = st
    return function(...)
      local t0 = monotime()
      local a, b, c, d = fn(...)
      local ms = (monotime() - t0) * 1000
      st.n = st.n + 1
      if ms > st.max_ms then st.max_ms = ms end
      return a, b, c, d
    end
  end
  for name, fn in pairs(methods) do
    if type(fn) == "function" and name:sub(1, 1) == "_" or name == "close" or name == "stats" then
      methods[name] = timed(name, fn)
    end
  end
  rw.core.writer.new = timed("core.writer.new", rw.core.writer.new)
  -- Time Abort: it runs in C on the worker's thread.
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
  if mode == "nobridge" then -- the worker's bridge is replaced by one that cannot be made
    local nw = waiting.ngx_wakeup
    if nw.bridge then nw.bridge:close() end
    nw.bridge, nw.failed, nw.dir = nil, nil, "/nonexistent/rw-wake"
  end
  local ok, err = pcall(require("rw_upload").handle)
  if forced then waiting.policy = policy end
  if mode == "sleep" then waiting.ngx_wakeup.disabled = false end
  if mode == "nobridge" then waiting.ngx_wakeup.failed, waiting.ngx_wakeup.dir = nil, nil end
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

-- GET /rwlag?start=1 starts a timer every 5 ms that records how late it
-- runs (the worker's event-loop stalls, free of client-side scheduling);
-- GET /rwlag answers "n p99_ms max_ms" and stops it.
local lag
function M.lag()
  if ngx.var.arg_start then
    lag = { samples = {}, on = true }
    local l = lag
    ngx.update_time()
    local last = ngx.now()
    local function tick(premature)
      if premature or not l.on then return end
      ngx.update_time()
      local now = ngx.now()
      l.samples[#l.samples + 1] = math.max(0, (now - last) * 1000 - 5)
      last = now
      ngx.timer.at(0.005, tick)
    end
    ngx.timer.at(0.005, tick)
    return ngx.say("started")
  end
  if not lag then return ngx.say("0 0 0") end
  lag.on = false
  local s = lag.samples
  table.sort(s)
  if #s == 0 then return ngx.say("0 0 0") end
  ngx.say(string.format("%d %.1f %.1f", #s, s[math.max(1, math.ceil(#s * 0.99))], s[#s]))
end

-- GET /rwcalls: the slowest calls into C, "name n max_ms" per line, slowest first.
function M.calls_report()
  local rows = {}
  for name, st in pairs(M.calls) do rows[#rows + 1] = { name, st.n, st.max_ms } end
  table.sort(rows, function(a, b) return a[3] > b[3] end)
  for _, r in ipairs(rows) do ngx.say(string.format("%s %d %.2f", r[1], r[2], r[3])) end
end

return M
