-- reliablewriter: reliable uploads of large streams to Google Cloud Storage.
-- The C module (reliablewriter.core) does the work; this file adds the
-- waiting policies (waiting.lua) to the objects that can wait: ctx:wait,
-- b:wait and rl:wait are defined here and only here.
local core = require "reliablewriter.core"
local waiting = require "reliablewriter.waiting"
local workgroup = require "reliablewriter.workgroup"

local M = {
  version = core.version,
  errors = core.errors,
  context = core.context,
  backoff = core.backoff,
  ratelimit = core.ratelimit,
  workgroup = workgroup,
  util = core.util,
  log = core.log,
  proxy = core.proxy,
  waiting = waiting,
  core = core,
}

local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

local function check_ctx(ctx, n, fname)
  if not core.context.is_context(ctx) then argerror(n, fname, "context expected, got " .. type(ctx)) end
end

-- ctx:wait([timeout]): true when the context is done (else false after timeout).
local cm = core.context.methods
function cm.wait(ctx, timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    argerror(1, "wait", "timeout must be a number >= 0")
  end
  local w = {
    ready = function() return ctx:done() end,
    fds = {}, -- ctx itself is watched (a workgroup needs no eventfd for it)
    timeout = function() return ctx:timeout() end,
    block = function(t) ctx:wait_blocking(t) end,
  }
  waiting.wait_for(w, ctx, timeout)
  return ctx:done()
end

-- b:wait(ctx): sleeps the next delay; true, or nil + err (budget or ctx).
local bm = core.backoff.methods
function bm.wait(b, ctx)
  check_ctx(ctx, 1, "wait")
  local d, err = b:next()
  if not d then return nil, err end
  return waiting.sleep(ctx, d)
end

-- rl:wait(ctx, n): takes n tokens, sleeping as needed; gives them back when
-- cancelled; fails at once if the wait would pass ctx's deadline.
local rm = core.ratelimit.methods
function rm.wait(rl, ctx, n)
  check_ctx(ctx, 1, "wait")
  n = n or 1
  local err = ctx:err()
  if err then return nil, err end
  local d = rl:reserve(n)
  if d <= 0 then return true end
  local left = ctx:timeout()
  if left and left < d then
    rl:cancel(n)
    return nil, core.errors.new { code = "rw.deadline_exceeded",
      message = ("rate limit wait of %.3f s would pass the deadline (%.3f s left)"):format(d, left) }
  end
  local ok, e = waiting.sleep(ctx, d)
  if not ok then rl:cancel(n) return nil, e end
  return true
end

-- The writer and the sink descriptors (rw.new, rw.resume, rw.gcs, rw.file).
-- The test bed (fake GCS, faults, faulty sink, probes) is its own module:
-- require "reliablewriter.testbed".
require("reliablewriter.writer").install(M, core, waiting)

return M
