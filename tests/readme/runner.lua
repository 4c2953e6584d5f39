-- Runs one ```lua block of README.md against an in-process fake GCS, for
-- tests/readme/run.sh (Lua 5.4 and LuaJIT, from the repository's root).
--   runner.lua README.md list        prints "LINE FLAGS" per ```lua block (LINE is
--                                    the fence's line; FLAGS "54" when the block
--                                    needs Lua 5.4 syntax: <close>, <const>)
--   runner.lua README.md LINE SEED   runs the block whose fence is on LINE
-- The prelude gives each block these globals (named at the top of the README's
-- Uploading section): rw, MiB, ctx (a fresh context, 60 s), url (the fake GCS,
-- bucket "b"), id (a retry test that answers the first upload request with a
-- 503), first_mib and second_mib (1 MiB random strings), part_file (a file of
-- 1 MiB + 4321 random bytes). Errors name README.md's own line numbers.
local readme, what, seed = arg[1], arg[2], tonumber(arg[3] or "")

local function blocks(path)
  local f = assert(io.open(path, "rb"))
  local out, cur, n = {}, nil, 0
  for line in f:lines() do
    n = n + 1
    if cur then
      if line:match("^```%s*$") then out[#out + 1] = cur; cur = nil
      else cur.lines[#cur.lines + 1] = line end
    elseif line:match("^```lua%s*$") then
      cur = { line = n, lines = {} }
    end
  end
  f:close()
  assert(not cur, path .. ":" .. (cur and cur.line or 0) .. ": a ```lua block is not closed")
  for _, b in ipairs(out) do
    b.code = table.concat(b.lines, "\n")
    -- LuaJIT (Lua 5.1) has no attribs: such a block runs on Lua 5.4 only.
    b.needs54 = b.code:find("<%s*close%s*>") ~= nil or b.code:find("<%s*const%s*>") ~= nil
  end
  return out
end

if what == "list" then
  for _, b in ipairs(blocks(readme)) do print(b.line, b.needs54 and "54" or "-") end
  os.exit(0)
end

local line = assert(tonumber(what), "usage: runner.lua README.md list | LINE SEED")
local block
for _, b in ipairs(blocks(readme)) do if b.line == line then block = b end end
assert(block, "no ```lua block starts on line " .. line)

-- ---- the prelude ----
rw = require "reliablewriter"
testbed = require "reliablewriter.testbed"
MiB = 1024 * 1024
math.randomseed(seed)
local unpack = table.unpack or unpack
local function random_bytes(n)
  local t, chunk = {}, {}
  for i = 1, n do
    chunk[#chunk + 1] = math.random(0, 255)
    if #chunk == 4096 or i == n then t[#t + 1] = string.char(unpack(chunk)); chunk = {} end
  end
  return table.concat(t)
end
first_mib, second_mib = random_bytes(MiB), random_bytes(MiB)
local part = random_bytes(MiB + 4321)
local tmpdir = assert(io.popen("mktemp -d /tmp/rw-readme.XXXXXX")):read("*l")
assert(tmpdir and tmpdir ~= "", "mktemp failed")
part_file = tmpdir .. "/part.bin"
do local f = assert(io.open(part_file, "wb")); f:write(part); f:close() end

local srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
url = srv:url()
ctx = rw.context.background():with_timeout(60)

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end
local out = sh(("curl -s -X POST -H 'Content-Type: application/json' --data "
  .. "'{\"instructions\": {\"storage.objects.insert\": [\"return-503\"]}}' %s/retry_test"):format(url))
id = out:match('"id"%s*:%s*"([^"]+)"')
assert(id, "POST /retry_test gave no id: " .. out)

-- ---- the block, with README.md's line numbers ----
local code = string.rep("\n", block.line) .. block.code
local fn, err = (loadstring or load)(code, "@" .. readme)
local ok
if fn then
  -- The traceback names the block's line (README.md:N) for errors raised as objects too.
  ok, err = xpcall(fn, function(e) return debug.traceback(tostring(e), 2) end)
end

-- ---- what a block that uploads must have stored ----
local checks = 0
if ok and block.code:find('"backup.tar"', 1, true) then
  local data = srv:object("b", "backup.tar")
  local want = first_mib .. second_mib .. part
  if data ~= want then
    local at = 1
    while data and at <= #want and data:byte(at) == want:byte(at) do at = at + 1 end
    ok, err = false, ("gs://b/backup.tar holds %s bytes, %d written; first difference at offset %d")
      :format(data and #data or "no", #want, at - 1)
  else
    checks = checks + 1
    local st = sh(("curl -s %s/retry_test/%s"):format(url, id))
    if not st:match('"completed"%s*:%s*true') then
      ok, err = false, "the retry test's 503 was not served (the block did not send id's header): " .. st
    else
      checks = checks + 1
    end
  end
end

srv:stop()
os.remove(part_file)
os.remove(tmpdir)
if not ok then
  io.stderr:write(("%s:%d: the ```lua block failed: %s\n"):format(readme, block.line, tostring(err)))
  os.exit(1)
end
print(("%s:%d (%d lines%s)"):format(readme, block.line, #block.lines,
  checks > 0 and (", stored bytes and the retry test checked") or ""))
os.exit(0)
