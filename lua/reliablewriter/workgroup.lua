-- Workgroup for Lua: tasks are coroutines run by one scheduler; at most
-- `limit` run at once; the first error cancels the group's context; wait()
-- returns true or nil, first_err. A task that waits on one of our objects
-- (context, backoff, rate limiter, writer) yields here instead of blocking,
-- so many tasks progress at once in one Lua state.
local core = require "reliablewriter.core"
local waiting = require "reliablewriter.waiting"
local errors = core.errors
local context = core.context
local util = core.util

local Workgroup = {}
Workgroup.__index = Workgroup
Workgroup.__name = "reliablewriter.Workgroup"

local KNOWN = { limit = true, ctx = true }

local function new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #1 to 'workgroup.new' (table expected)", 2) end
  for k in pairs(opts) do
    if not KNOWN[k] then
      error(("bad argument #1 to 'workgroup.new' (unknown option '%s'; known: limit, ctx)"):format(tostring(k)), 2)
    end
  end
  local limit = opts.limit or math.huge
  if type(limit) ~= "number" or limit ~= limit or limit < 1 or (limit ~= math.huge and limit % 1 ~= 0) then
    error("bad argument #1 to 'workgroup.new' (option 'limit' must be a whole number >= 1 (got "
      .. tostring(opts.limit) .. "))", 2)
  end
  if opts.ctx ~= nil and not context.is_context(opts.ctx) then
    error("bad argument #1 to 'workgroup.new' (option 'ctx' must be a context)", 2)
  end
  local parent = opts.ctx or context.background()
  return setmetatable({
    limit = limit, ctx = parent:with_cancel(), pending = {}, phead = 1, running = {}, nrunning = 0,
    first_err = nil, closed = false,
  }, Workgroup)
end

local function task_error(self, err)
  if self.first_err then return end
  if not errors.is_error(err) then
    err = errors.new { code = "rw.task_failed", message = tostring(err) }
  end
  self.first_err = err
  self.ctx:cancel(err)
end

-- go(fn, ...): queues fn(...) as a task; it starts when a slot is free.
function Workgroup:go(fn, ...)
  if self.closed then error("attempt to use a closed workgroup", 2) end
  if type(fn) ~= "function" then error("bad argument #1 to 'go' (function expected, got " .. type(fn) .. ")", 2) end
  local args = table.pack and table.pack(...) or { n = select("#", ...), ... }
  self.pending[#self.pending + 1] = { fn = fn, args = args }
  return true
end

function Workgroup:context() return self.ctx end
function Workgroup:error() return self.first_err end

local unpack = table.unpack or unpack
local monotime = util.monotime

-- A task that waits with neither an fd nor a timeout (a custom waitable with
-- nothing to poll) is looked at again after RECHECK. One that waits on fds
-- (and maybe a context), after RECHECK_FDS: an fd closed while waited on (a writer closed by
-- another task) leaves the wait set silently and its number may be reused.
-- Contexts need no such net: the set holds a reference to each.
local RECHECK, RECHECK_FDS = 0.1, 1

local function start_pending(self, S)
  local pending = self.pending
  while self.nrunning < self.limit and self.phead <= #pending do
    local t = pending[self.phead]
    pending[self.phead] = false -- (not nil: the array keeps its length)
    self.phead = self.phead + 1
    if not self.ctx:done() then -- a failed group starts nothing more
      local co = coroutine.create(function()
        local r = { pcall(t.fn, unpack(t.args, 1, t.args.n)) }
        if not r[1] then return false, r[2] end
        if r[2] == nil and r[3] ~= nil then return false, r[3] end
        return true
      end)
      waiting.schedulers[co] = self
      self.running[co] = { seq = 0 }
      self.nrunning = self.nrunning + 1
      S.runq[#S.runq + 1] = co
    end
  end
  if self.phead > #pending then self.pending, self.phead = {}, 1 end
end

local function finish(self, co)
  self.running[co] = nil
  waiting.schedulers[co] = nil
  self.nrunning = self.nrunning - 1
end

---------------------------------------------------------------- timers (a binary min-heap of {t, co, seq})

local function heap_push(h, e)
  local i = #h + 1
  h[i] = e
  while i > 1 do
    local p = (i - i % 2) / 2
    if h[p].t <= e.t then break end
    h[i], i = h[p], p
  end
  h[i] = e
end

local function heap_pop(h)
  local top, n = h[1], #h
  local last = h[n]
  h[n] = nil
  n = n - 1
  if n == 0 then return top end
  local i = 1
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and h[c + 1].t < h[c].t then c = c + 1 end
    if last.t <= h[c].t then break end
    h[i], i = h[c], c
  end
  h[i] = last
  return top
end

-- Drops timers of waits that ended (woken by an fd or a context) once they
-- outnumber the live ones, so long timeouts woken early cost no memory.
local function heap_compact(self, S)
  local h = S.heap
  if #h < 64 or #h < 2 * S.nwaiting then return end
  local live = {}
  for i = 1, #h do
    local e = h[i]
    local st = self.running[e.co]
    if st and st.waiting and st.seq == e.seq then live[#live + 1] = e end
  end
  S.heap = {}
  for i = 1, #live do heap_push(S.heap, live[i]) end
end

---------------------------------------------------------------- waits

-- The wait set is made on the first wait, so a group whose tasks never wait
-- holds no fd.
local function waitset(S)
  if not S.ws then
    local ws, err = core.workgroup.waitset()
    if not ws then error(err, 0) end
    S.ws = ws
  end
  return S.ws
end

-- Each fd and each context is in the wait set once, with the set of tasks
-- waiting on it (several tasks may wait on one context).
local function watch_fd(S, co, fd)
  local set = S.fds[fd]
  if not set then
    local ok, err = waitset(S):add(fd)
    if not ok then error(err, 0) end
    set = { n = 0, tasks = {} }
    S.fds[fd] = set
  end
  if set.tasks[co] then return false end
  set.tasks[co] = true
  set.n = set.n + 1
  return true
end

local function watch_ctx(S, co, ctx)
  local set = S.ctxs[ctx]
  if not set then
    local id, err = waitset(S):watch(ctx)
    if not id then error(err, 0) end
    set = { n = 0, tasks = {}, id = id, ctx = ctx }
    S.ctxs[ctx] = set
    S.ids[id] = set
  end
  if set.tasks[co] then return false end
  set.tasks[co] = true
  set.n = set.n + 1
  return true
end

local function unwatch(S, co, st)
  for i = 1, #st.fds do
    local fd = st.fds[i]
    local set = S.fds[fd]
    set.tasks[co] = nil
    set.n = set.n - 1
    if set.n == 0 then
      S.fds[fd] = nil
      S.ws:remove(fd)
    end
  end
  local ctx = st.ctx
  if ctx then
    local set = S.ctxs[ctx]
    set.tasks[co] = nil
    set.n = set.n - 1
    if set.n == 0 then
      S.ctxs[ctx], S.ids[set.id] = nil, nil
      S.ws:unwatch(set.id)
    end
  end
  st.fds, st.ctx = nil, nil
end

-- A task yielded from waiting.wait_for(w, ctx, t): sleep until one of w's
-- fds is readable, ctx is cancelled, or t seconds. The task then looks again.
local function park(self, S, co, st, w, ctx, t)
  st.waiting = true
  st.seq = st.seq + 1
  st.fds = {}
  S.nwaiting = S.nwaiting + 1
  if S.nwaiting > (self.peak_waiting or 0) then self.peak_waiting = S.nwaiting end
  for _, fd in ipairs(w.fds or {}) do
    if watch_fd(S, co, fd) then st.fds[#st.fds + 1] = fd end
  end
  if ctx then
    watch_ctx(S, co, ctx)
    st.ctx = ctx
  end
  if not t then
    if #st.fds > 0 then t = RECHECK_FDS elseif not ctx then t = RECHECK end
  end
  if t then heap_push(S.heap, { t = monotime() + t, co = co, seq = st.seq }) end
end

local function wake(S, co, st)
  if not st.waiting then return end
  st.waiting = false
  st.seq = st.seq + 1
  S.nwaiting = S.nwaiting - 1
  unwatch(S, co, st)
  S.runq[#S.runq + 1] = co
end

---------------------------------------------------------------- running

local function step(self, S, co, st)
  st.started = true
  local ok, tag, w, ctx, t = coroutine.resume(co)
  if not ok then
    task_error(self, tag)
  elseif coroutine.status(co) == "dead" then
    if tag == false then task_error(self, w) end
  elseif tag == waiting.YIELD_TAG then
    return park(self, S, co, st, w, ctx, t)
  else
    S.runq[#S.runq + 1] = co -- a plain yield: run again next round
    return
  end
  finish(self, co)
end

local function wake_ready(self, S, timeout)
  local nfds, nids, fds, ids = S.ws:wait(timeout, S.fdbuf, S.idbuf)
  local woken = S.woken
  local n = 0
  for i = 1, nfds do
    local set = S.fds[fds[i]]
    if set then for co in pairs(set.tasks) do n = n + 1; woken[n] = co end end
  end
  for i = 1, nids do
    local set = S.ids[ids[i]]
    if set then for co in pairs(set.tasks) do n = n + 1; woken[n] = co end end
  end
  for i = 1, n do
    local co = woken[i]
    woken[i] = nil
    local st = self.running[co]
    if st then wake(S, co, st) end
  end
end

local function wake_timers(self, S)
  local h, now = S.heap, monotime()
  while h[1] and h[1].t <= now do
    local e = heap_pop(h)
    local st = self.running[e.co]
    if st and st.seq == e.seq then wake(S, e.co, st) end
  end
  heap_compact(self, S)
end

local function run(self, S)
  while true do
    start_pending(self, S)
    if self.nrunning == 0 then return end
    local q = S.runq
    S.runq = {}
    for i = 1, #q do
      local st = self.running[q[i]]
      if st then step(self, S, q[i], st) end
    end
    start_pending(self, S)
    if self.nrunning == 0 then return end
    local timeout
    if #S.runq > 0 then
      timeout = 0
    elseif S.heap[1] then
      timeout = math.max(0, S.heap[1].t - monotime())
    end
    if S.ws then
      wake_ready(self, S, timeout)
    elseif timeout and timeout > 0 then
      util.sleep(timeout)
    end
    wake_timers(self, S)
  end
end

---------------------------------------------------------------- failure of the scheduler itself

-- Every wait of every task raises err (waiting.wait_for), so the tasks end;
-- a task that catches it and waits again gets it again, up to a bound; what
-- is left is closed (Lua 5.4) and dropped. Tasks that never ran are dropped.
local function abort_tasks(self, S, err)
  self.pending, self.phead = {}, 1
  for _ = 1, 100 do
    local any = false
    for co, st in pairs(self.running) do
      any = true
      if not st.started then
        finish(self, co)
      else
        local ok, tag = coroutine.resume(co, waiting.ABORT_TAG, err)
        if not ok or coroutine.status(co) == "dead" then
          if not ok then task_error(self, tag) end
          finish(self, co)
        end
      end
    end
    if not any then break end
  end
  for co in pairs(self.running) do
    if coroutine.close then coroutine.close(co) end
    finish(self, co)
  end
end

local function as_error(e)
  if errors.is_error(e) then return e end
  return errors.new { code = "rw.internal", message = "the workgroup's scheduler failed: " .. tostring(e) }
end

-- Runs tasks until all are done. Returns true, or nil and the first error.
function Workgroup:wait()
  if self.closed then error("attempt to use a closed workgroup", 2) end
  if waiting.policy() == "yield" then error("wait() inside a task of a workgroup is not supported", 2) end
  local S = {
    runq = {}, heap = {}, nwaiting = 0, fds = {}, ctxs = {}, ids = {},
    fdbuf = {}, idbuf = {}, woken = {}, ws = nil,
  }
  self.sched = S
  local ok, e = pcall(run, self, S)
  if not ok then
    local err = as_error(e)
    task_error(self, err) -- cancels the group's context
    abort_tasks(self, S, err)
  end
  if S.ws then S.ws:close() end
  self.sched = nil
  if not ok then collectgarbage() end -- writers only the aborted tasks held: their __gc stops them
  if self.first_err then return nil, self.first_err end
  return true
end

-- stats(): counts for tests and monitoring.
function Workgroup:stats()
  local S = self.sched
  local nfds, nctx = 0, 0
  if S and S.ws and not S.ws:is_closed() then nfds, nctx = S.ws:counts() end
  return {
    running = self.nrunning, pending = #self.pending - self.phead + 1,
    waiting = S and S.nwaiting or 0, peak_waiting = self.peak_waiting or 0,
    fds = nfds, contexts = nctx,
  }
end

function Workgroup:close()
  if self.closed then return end
  self.closed = true
  self.ctx:cancel()
end
Workgroup.__close = Workgroup.close
Workgroup.__gc = Workgroup.close

return { new = new, Workgroup = Workgroup }
