-- Upload a file to GCS: the smallest complete program.
--   lua5.4 examples/upload_file.lua FILE BUCKET OBJECT
-- The endpoint is $STORAGE_EMULATOR_HOST when set (a fake or emulator),
-- else Google's with the library's credentials.
local rw = require "reliablewriter"

local path, bucket, object = arg[1], arg[2], arg[3]
if not (path and bucket and object) then
  io.stderr:write("usage: upload_file.lua FILE BUCKET OBJECT\n")
  os.exit(2)
end

local ctx = rw.context.background():with_timeout(3600)
local w <close> = assert(rw.new(ctx, {
  sink = rw.gcs { bucket = bucket, object = object, if_generation_match = 0 },  -- only if absent
  max_cache_size = 64 * 1024 * 1024, max_chunk_size = 16 * 1024 * 1024,
  checksum = "crc32c",
}))
local ok, err = w:write_file(0, path)   -- C reads the file; the whole of it
if ok then
  local obj
  obj, err = w:Complete()
  if obj then
    print(("gs://%s/%s: %s bytes, crc32c %s, generation %s"):format(obj.bucket, obj.name, obj.size,
      obj.crc32c, obj.generation))
    os.exit(0)
  end
end
io.stderr:write("upload failed: ", tostring(err), "\n")   -- message, code, what to do, id
os.exit(1)
