-- The same upload as rw_upload.lua does, from plain Lua: a file read into a
-- writer with the example's writer options. Prints the seconds. It reads 1 MiB
-- pieces, not the example's 120 KiB: the reference at its best (Lua 5.4's
-- allocator has no 128 KiB cliff, and fewer WriteAt calls cost less).
--   lua5.4 bench/openresty/plain.lua ENDPOINT OBJECT FILE   (FILE "-": stdin, e.g. a pipe)
local rw = require "reliablewriter"
local up = dofile("examples/openresty/rw_upload.lua") -- its DEFAULTS only (no ngx needed)
local endpoint, object, path = arg[1], arg[2], arg[3]
local opts = { sink = rw.gcs { bucket = "b", object = object, endpoint = endpoint } }
for k, v in pairs(up.DEFAULTS.writer) do opts[k] = v end
local f = path == "-" and io.stdin or assert(io.open(path, "rb"))
local t0 = rw.util.monotime()
local w = assert(rw.new(rw.context.background(), opts))
local off = 0
while true do
  local data = f:read(1048576)
  if not data then break end
  assert(w:WriteAt(off, data))
  off = off + #data
end
local obj = assert(w:Complete())
w:close()
assert(obj.size == off)
print(string.format("%.3f", rw.util.monotime() - t0))
