-- Shared helpers for the specs: a printed seed, random bytes, the module.
local H = {}

local seed = tonumber(os.getenv("RW_TEST_SEED") or "") or (os.time() * 1000 + math.floor(os.clock() * 1e6) % 1000)
H.seed = seed
io.stderr:write(("[spec] seed=%d (set RW_TEST_SEED to repeat)\n"):format(seed))
math.randomseed(seed)

function H.rw() return require "reliablewriter" end

-- n random bytes from the seeded generator.
function H.random_bytes(n)
  local parts, chunk = {}, {}
  local i = 0
  while i < n do
    local m = math.min(4096, n - i)
    for j = 1, m do chunk[j] = math.random(0, 255) end
    parts[#parts + 1] = string.char((table.unpack or unpack)(chunk, 1, m))
    i = i + m
  end
  return table.concat(parts)
end

function H.now() return require("reliablewriter.core").util.monotime() end

-- Message of an error raised by fn(...).
function H.raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error to be raised")
  return tostring(err)
end

return H
