-- Many uploads at once: a workgroup runs one coroutine per file (at most 4
-- at a time) and a shared token bucket caps the bytes per second of all of
-- them together. One thread of Lua; the network work runs on the library's pool.
--   lua5.4 examples/many_uploads.lua BUCKET PREFIX FILE...
local rw = require "reliablewriter"
local MiB = 1024 * 1024

local bucket, prefix = arg[1], arg[2]
local files = { table.unpack(arg, 3) }
if not bucket or #files == 0 then
  io.stderr:write("usage: many_uploads.lua BUCKET PREFIX FILE...\n")
  os.exit(2)
end

local ctx = rw.context.background():with_timeout(600)
local rl = rw.ratelimit.new { rate = 64 * MiB, burst = 8 * MiB }  -- bytes a second, for all
local wg = rw.workgroup.new { ctx = ctx, limit = 4 }
local done = {}

for i, path in ipairs(files) do
  wg:go(function()
    local f = assert(io.open(path, "rb"))
    local w <close> = assert(rw.new(ctx, {
      sink = rw.gcs { bucket = bucket, object = prefix .. i },
      max_cache_size = 8 * MiB, max_chunk_size = 2 * MiB,
    }))
    local off = 0
    while true do
      local piece = f:read(MiB)
      if not piece then break end
      assert(rl:wait(ctx, #piece))        -- yields to the other uploads while it waits
      assert(w:WriteAt(off, piece))      -- so does a full cache
      off = off + #piece
    end
    f:close()
    local obj = assert(w:Complete())
    done[#done + 1] = ("%s -> gs://%s/%s (%s bytes, crc32c %s)"):format(path, bucket, obj.name, obj.size, obj.crc32c)
  end)
end

local ok, err = wg:wait()   -- the first error cancels the others
table.sort(done)
for _, line in ipairs(done) do print(line) end
if not ok then
  io.stderr:write("failed: ", tostring(err), "\n")
  os.exit(1)
end
