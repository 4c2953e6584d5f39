-- bench/writer: one upload of FILE through reliablewriter to the fake GCS.
--   lua5.4 bench/writer/lua_up.lua MODE ENDPOINT OBJECT FILE [cache_mib=32] [chunk_mib=8]
-- MODE: "file" (w:write_file), "writeat" (1 MiB strings read by Lua, WriteAt) or
-- "writeat_gc" (the same plus collectgarbage() every 8 MiB: a diagnostic that
-- separates uncollected Lua garbage from bytes the writer holds), or
-- "writeat_pre" (all 1 MiB strings read before the clock starts: a throughput
-- diagnostic that leaves io.read out; its RSS is the whole file, ignore it).
-- Prints: seconds bytes MiB/s baseline_kib hwm_kib sampled_peak_kib crc32c
--   baseline_kib: VmRSS just before rw.new (library, libcurl, Lua loaded)
--   hwm_kib: VmHWM after resetting it (clear_refs 5) at the baseline point
--   sampled_peak_kib: max VmRSS sampled on every on_progress callback and WriteAt
local rw = require "reliablewriter"
local testbed = require "reliablewriter.testbed"
local MiB = 1024 * 1024
local mode, url, object, path = arg[1], arg[2], arg[3], arg[4]
local cache = tonumber(arg[5] or 32) * MiB
local chunk = tonumber(arg[6] or 8) * MiB

local function status(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)"))
end

collectgarbage("collect")
local ctx = rw.context.background()
local baseline = status("VmRSS")
do -- reset VmHWM to the current RSS (Linux >= 4.0)
  local f = io.open("/proc/self/clear_refs", "w")
  if f then f:write("5"); f:close() end
end
local peak = baseline
local function sample()
  local r = testbed.probes.rss_kib()
  if r > peak then peak = r end
end

local w = assert(rw.new(ctx, { sink = rw.gcs { bucket = "b", object = object, endpoint = url },
  max_cache_size = cache, min_chunk_size = chunk, max_chunk_size = chunk, checksum = "crc32c",
  on_progress = sample }))
local pre
if mode == "writeat_pre" then
  pre = {}
  local f = assert(io.open(path, "rb"))
  for s in function() return f:read(MiB) end do pre[#pre + 1] = s end
  f:close()
end
local t0 = rw.util.monotime()
if mode == "writeat_pre" then
  local off = 0
  for i = 1, #pre do
    assert(w:WriteAt(off, pre[i]))
    off = off + #pre[i]
  end
elseif mode == "file" then
  assert(w:write_file(0, path))
elseif mode == "writeat" or mode == "writeat_gc" then
  local f = assert(io.open(path, "rb"))
  local off = 0
  while true do
    local s = f:read(MiB)
    if not s then break end
    assert(w:WriteAt(off, s))
    off = off + #s
    if mode == "writeat_gc" and off % (8 * MiB) == 0 then collectgarbage() end
    sample()
  end
  f:close()
else
  error("mode must be file, writeat, writeat_gc or writeat_pre")
end
local obj = assert(w:Complete())
local dt = rw.util.monotime() - t0
sample()
local hwm = status("VmHWM")
io.write(("%.3f %d %.1f %d %d %d %s\n"):format(dt, obj.size, obj.size / dt / MiB, baseline, hwm, peak, obj.crc32c))
