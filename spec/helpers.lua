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

-- Runs fn(...) with the library's log captured (warn and above); returns the
-- captured lines (a list of strings) and fn's results. Specs that expect a
-- failure use it, so a passing run prints no error lines, and assert on them.
function H.capture_log(fn, ...)
  local log = require("reliablewriter").log
  log.capture("warn")
  local function pack(...) return { n = select("#", ...), ... } end
  local r = pack(pcall(fn, ...))
  local lines = log.stop()
  if not r[1] then error(r[2], 0) end
  return lines, (table.unpack or unpack)(r, 2, r.n)
end

-- True when one of the lines matches the Lua pattern.
function H.has_line(lines, pattern)
  for _, l in ipairs(lines) do if l:match(pattern) then return true end end
  return false
end

return H
