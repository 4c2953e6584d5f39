-- Resume after a crash: save w:session() as the upload goes; after a crash
-- (here: the writer is dropped with Suspend, as a killed process would leave
-- it), rw.resume continues from what the server holds.
--   lua5.4 examples/resume_after_crash.lua BUCKET OBJECT
local rw = require "reliablewriter"
local MiB = 1024 * 1024
local bucket, object = arg[1], arg[2]
if not (bucket and object) then io.stderr:write("usage: resume_after_crash.lua BUCKET OBJECT\n"); os.exit(2) end

local data = {}
for i = 1, 6 do data[i] = string.pack("<I8", i * 7919 + os.time()):rep(MiB // 8) end
data = table.concat(data)
local opts = { min_chunk_size = 256 * 1024, max_chunk_size = 256 * 1024, max_cache_size = 2 * MiB }
local ctx = rw.context.background():with_timeout(120)

-- 1. The first process: uploads half, saving its session after each piece
--    (a real program writes it to a file, atomically; see rwup's state).
local saved
do
  opts.sink = rw.gcs { bucket = bucket, object = object }
  local w = assert(rw.new(ctx, opts))
  for off = 0, #data // 2 - 1, MiB do
    assert(w:WriteAt(off, data:sub(off + 1, off + MiB)))
    saved = w:session() or saved        -- { uri =, persisted =, crc32c = }
  end
  saved = assert(w:Suspend())           -- the "crash": nothing deleted, nothing finished
end
print(("crashed with %d bytes confirmed by the server"):format(saved.persisted))

-- 2. The next process: resume from the saved session, write from where it
--    says, complete. Bytes the server holds beyond `persisted` are not resent.
opts.sink = rw.gcs { bucket = bucket, object = object }
local w <close> = assert(rw.resume(ctx, saved, opts))
for off = saved.persisted, #data - 1, MiB do
  assert(w:WriteAt(off, data:sub(off + 1, math.min(#data, off + MiB))))
end
local obj = assert(w:Complete())
assert(tonumber(obj.size) == #data)
print(("resumed and finished: %s bytes, crc32c %s"):format(obj.size, obj.crc32c))
