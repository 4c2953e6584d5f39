-- Locations of bench/openresty/run.sh (inside the nginx worker).
local M = {}

-- GET /bench/complete?mode=wake|sleep|block&n=N: N one-byte uploads, each
-- WriteAt + Complete; answers "median p90" of Complete's time in ms. The
-- difference between the modes is what the waiting policy adds per Complete.
function M.complete()
  local rw = require "reliablewriter"
  local waiting = rw.waiting
  local util = rw.util
  local mode = ngx.var.arg_mode or "wake"
  local n = tonumber(ngx.var.arg_n) or 50
  local policy = waiting.policy
  if mode == "block" then waiting.policy = function() return "block" end end
  waiting.ngx_wakeup.disabled = mode == "sleep"
  local times = {}
  for i = 1, n do
    local w = assert(rw.new(rw.context.background(), {
      sink = rw.gcs { bucket = "b", object = "lat-" .. mode .. "-" .. i, endpoint = ngx.var.rw_endpoint } }))
    assert(w:WriteAt(0, "x"))
    local t0 = util.monotime()
    assert(w:Complete())
    times[i] = (util.monotime() - t0) * 1000
    w:close()
  end
  waiting.policy = policy
  waiting.ngx_wakeup.disabled = false
  table.sort(times)
  ngx.say(string.format("%.2f %.2f", times[math.ceil(n / 2)], times[math.ceil(n * 0.9)]))
end

-- PUT /bench/discard: reads a Content-Length body the way rw_upload does
-- (ngx.req.socket, the example's pieces) and drops it: the cost of reading alone.
function M.discard()
  local piece = require("rw_upload").DEFAULTS.piece
  local len = tonumber(ngx.var.http_content_length) or 0
  local sock = assert(ngx.req.socket())
  local off = 0
  while off < len do
    local data = assert(sock:receive(math.min(piece, len - off)))
    off = off + #data
  end
  ngx.say(off)
end

return M
