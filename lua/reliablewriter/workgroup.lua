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
    limit = limit, ctx = parent:with_cancel(), pending = {}, running = {}, nrunning = 0,
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

local function start_pending(self)
  while self.nrunning < self.limit and #self.pending > 0 do
    local t = table.remove(self.pending, 1)
    if self.ctx:done() then
      -- a failed group starts nothing more
    else
      local co = coroutine.create(function()
        local r = { pcall(t.fn, unpack(t.args, 1, t.args.n)) }
        if not r[1] then return false, r[2] end
        if r[2] == nil and r[3] ~= nil then return false, r[3] end
        return true
      end)
      waiting.schedulers[co] = self
      self.running[co] = { runnable = true }
      self.nrunning = self.nrunning + 1
    end
  end
end

local function resume(self, co, st)
  local ok, tag, w, ctx, t = coroutine.resume(co)
  if not ok then
    task_error(self, tag)
  elseif coroutine.status(co) == "dead" then
    if tag == false then task_error(self, w) end
  elseif tag == waiting.YIELD_TAG then
    st.runnable, st.w, st.ctx = false, w, ctx
    st.until_t = t and (util.monotime() + t) or nil
    return
  else
    st.runnable = true -- a plain yield: run again next round
    return
  end
  self.running[co] = nil
  waiting.schedulers[co] = nil
  self.nrunning = self.nrunning - 1
end

local function ready(st)
  if st.runnable then return true end
  if st.w.ready() then return true end
  if st.ctx and st.ctx:done() then return true end
  if st.until_t and util.monotime() >= st.until_t then return true end
  return false
end

-- Runs tasks until all are done. Returns true, or nil and the first error.
function Workgroup:wait()
  if self.closed then error("attempt to use a closed workgroup", 2) end
  if waiting.policy() == "yield" then error("wait() inside a task of a workgroup is not supported", 2) end
  while true do
    start_pending(self)
    if self.nrunning == 0 and #self.pending == 0 then break end
    if self.nrunning == 0 then -- group failed: drop what never started
      self.pending = {}
      break
    end
    local progressed = false
    for co, st in pairs(self.running) do
      if ready(st) then
        st.runnable = true
        resume(self, co, st)
        progressed = true
      end
    end
    if not progressed then
      local fds, tmin = {}, 0.1
      for _, st in pairs(self.running) do
        for _, fd in ipairs(st.w.fds or {}) do fds[#fds + 1] = fd end
        if st.ctx then fds[#fds + 1] = st.ctx:pollfd() end
        local t = st.w.timeout and st.w.timeout()
        if st.until_t then
          local u = math.max(0, st.until_t - util.monotime())
          if not t or u < t then t = u end
        end
        if t and t < tmin then tmin = t end
      end
      util.poll(fds, tmin)
    end
  end
  if self.first_err then return nil, self.first_err end
  return true
end

function Workgroup:close()
  if self.closed then return end
  self.closed = true
  self.ctx:cancel()
end
Workgroup.__close = Workgroup.close
Workgroup.__gc = Workgroup.close

return { new = new, Workgroup = Workgroup }
