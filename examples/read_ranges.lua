-- Read byte ranges of an object with hedged requests: a range whose first
-- byte is slow to come is asked again, and the first answer wins. Reads run
-- concurrently from workgroup coroutines on the library's pool.
--   lua5.4 examples/read_ranges.lua BUCKET OBJECT [LOCAL_COPY]
-- With LOCAL_COPY (the same bytes on disk), every range is checked against it.
local rw = require "reliablewriter"
local bucket, object, copy = arg[1], arg[2], arg[3]
if not (bucket and object) then
  io.stderr:write("usage: read_ranges.lua BUCKET OBJECT [LOCAL_COPY]\n")
  os.exit(2)
end

local ctx = rw.context.background():with_timeout(120)
local r <close> = assert(rw.reader(ctx, {
  source = rw.gcs { bucket = bucket, object = object },
  hedge_after = 0.2,   -- seconds without a first byte before asking again (default: the p95 seen)
  max_hedges = 2,
}))
local meta = assert(r:stat())   -- pins the generation: a concurrent overwrite is an error, never a mix
local size = tonumber(meta.size)
local local_bytes
if copy then
  local f = assert(io.open(copy, "rb"))
  local_bytes = f:read("a")
  f:close()
end

math.randomseed(tonumber(os.getenv("RW_TEST_SEED") or "") or os.time())
local wg = rw.workgroup.new { ctx = ctx, limit = 8 }
local checked = 0
for _ = 1, 32 do
  local off = math.random(0, math.max(0, size - 1))
  local len = math.random(0, math.min(256 * 1024, size - off))
  wg:go(function()
    local s = assert(r:ReadAt(off, len))     -- exactly len bytes, or nil, err
    assert(#s == len)
    if local_bytes then
      assert(s == local_bytes:sub(off + 1, off + len), ("range %d+%d differs"):format(off, len))
    end
    checked = checked + 1
  end)
end
assert(wg:wait())
local st = r:stats()
print(("%d ranges of gs://%s/%s (generation %s) read%s: %d requests, %d hedges issued, %d won")
  :format(checked, bucket, object, meta.generation, local_bytes and " and checked" or "", st.requests,
          st.hedges_issued, st.hedges_won))
