-- Child process of spec/resume_soak_spec.lua: uploads the trial's bytes and,
-- after every progress, saves w:session() atomically to DIR/state, until the
-- parent kills it with SIGKILL. Also usable as a module (the data generator).
--
--   lua resume_child.lua URL OBJECT SEED SIZE CHUNK CACHE BANDWIDTH LATENCY DIR
--
-- It prints its pid first. Marker files in DIR: writing (before the first
-- WriteAt), completing (before Complete), done (after Complete returned the
-- object); state holds "uri\npersisted\ncrc32c\n".
local C = {}

-- Park-Miller ("minimal standard") generator: exact in doubles, so Lua 5.4
-- and LuaJIT, parent and child, agree on every value.
function C.rng(seed)
  local x = seed % 2147483646 + 1
  return function(lo, hi)
    x = x * 16807 % 2147483647
    return lo + x % (hi - lo + 1)
  end
end

-- The trial's n bytes: random pieces (512 B..4 KiB, at random offsets) of a
-- 256 KiB random pool, so no offset shift maps the data onto itself.
function C.data(seed, n)
  local r = C.rng(seed * 7 + 3)
  local pool, buf = {}, {}
  local POOL = 256 * 1024
  for i = 1, POOL, 4096 do
    for j = 1, 4096 do buf[j] = r(0, 255) end
    pool[#pool + 1] = string.char((table.unpack or unpack)(buf, 1, 4096))
  end
  pool = table.concat(pool)
  local parts, have = {}, 0
  while have < n do
    local len = math.min(n - have, r(512, 4096))
    local at = r(1, POOL - len + 1)
    parts[#parts + 1] = pool:sub(at, at + len - 1)
    have = have + len
  end
  return table.concat(parts)
end

-- The saved state, or nil when none was written.
function C.read_state(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local uri, persisted, crc = f:read("l", "l", "l")
  f:close()
  assert(uri and persisted, "a torn state file: " .. path)
  return { uri = uri, persisted = assert(tonumber(persisted)), crc32c = (crc ~= "" and crc) or nil }
end

local function touch(path)
  local f = assert(io.open(path, "wb"))
  f:close()
end

local function save_state(dir, s)
  local tmp = dir .. "/state.tmp"
  local f = assert(io.open(tmp, "wb"))
  assert(f:write(s.uri, "\n", string.format("%d", s.persisted), "\n", s.crc32c or "", "\n"))
  assert(f:close())
  assert(os.rename(tmp, dir .. "/state"))
end

local function main(url, object, seed, size, chunk, cache, bandwidth, latency, dir)
  local pidf = assert(io.open("/proc/self/stat"))
  io.stdout:write(pidf:read("l"):match("^(%d+)"), "\n")
  pidf:close()
  io.stdout:flush()
  local rw = require "reliablewriter"
  local testbed = require "reliablewriter.testbed"
  seed, size, chunk, cache = tonumber(seed), tonumber(size), tonumber(chunk), tonumber(cache)
  bandwidth, latency = tonumber(bandwidth), tonumber(latency)
  local data = C.data(seed, size)
  local w
  w = assert(rw.new(rw.context.background(), {
    sink = rw.gcs { bucket = "b", object = object, endpoint = url,
                    faults = testbed.faults.profile { seed = seed, bandwidth = bandwidth, latency = latency } },
    min_chunk_size = 256 * 1024, max_chunk_size = chunk, max_cache_size = cache,
    retry = { min_wait = 0.005, max_wait = 0.05, total_wait = 20, seed = seed },
    on_progress = function()
      local s = w:session()
      if s then save_state(dir, s) end
    end,
  }))
  touch(dir .. "/writing")
  local off, pr = 0, C.rng(seed * 13 + 5)
  while off < #data do
    local n = math.min(#data - off, pr(1, 256 * 1024))
    assert(w:WriteAt(off, data:sub(off + 1, off + n)))
    off = off + n
  end
  touch(dir .. "/completing")
  local obj = assert(w:Complete())
  assert(obj.size == #data)
  local s = w:session()
  if s then save_state(dir, s) end
  touch(dir .. "/done")
  os.exit(0)
end

if arg and arg[0] and arg[0]:match("resume_child%.lua$") and select("#", ...) >= 9 then
  main(...)
end

return C
