-- reliablewriter: reliable uploads of large streams to Google Cloud Storage.
-- The C module (reliablewriter.core) does the work and defines every method
-- of its types (csrc/lua/l_*.c); those that may wait (ctx:wait, b:wait,
-- rl:wait, the writer's WriteAt, Complete, ...) wait through the policy that
-- waiting.lua registers (block, yield to a workgroup, ngx.sleep).
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

-- The writer and the sink descriptors (rw.new, rw.resume, rw.gcs, rw.file).
-- The test bed (fake GCS, faults, faulty sink, probes) is its own module:
-- require "reliablewriter.testbed".
require("reliablewriter.writer").install(M, core)
require("reliablewriter.reader").install(M, core, waiting)

return M
