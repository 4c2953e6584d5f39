-- kill -9 / resume soak (issue 8, item 5): a child process uploads random
-- bytes to the in-process fake GCS and saves w:session() after every
-- progress; the parent kills it with SIGKILL at a random moment (before its
-- first state, mid-upload, during Complete), resumes from the saved state
-- (or starts over when there is none) and finishes: the object must be
-- byte-identical every time. RW_SOAK_TRIALS changes the number of trials.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local C = require "resume_child"
local KiB, MiB = 1024, 1024 * 1024
local TRIALS = tonumber(os.getenv("RW_SOAK_TRIALS") or "") or 20
local LUA = jit and "luajit" or "lua5.4"

local function shq(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Starts the child; returns a handle whose reap() kills (SIGKILL) and reaps
-- it, and may be called any number of times.
local function spawn(args, dir)
  local cmd = ("LUA_PATH=%s LUA_CPATH=%s exec %s spec/resume_child.lua %s 2>%s"):format(
    shq(package.path), shq(package.cpath), LUA, table.concat(args, " "), shq(dir .. "/stderr"))
  local child = { p = assert(io.popen(cmd, "r")) }
  function child.reap()
    if not child.p then return end
    if child.pid then os.execute("kill -9 " .. child.pid .. " 2>/dev/null") end
    child.p:close() -- waits for it: no zombie is left
    child.p = nil
  end
  child.pid = tonumber(child.p:read("l") or "")
  if not child.pid then
    child.reap()
    error("the child printed no pid: " .. slurp(dir .. "/stderr"))
  end
  return child
end

-- What a session holds, by a status query (harmless: it changes nothing):
-- bytes, and whether it is finalized (a request the killed child had sent
-- whole may still finalize it after the kill).
local function server_holds(uri)
  local p = io.popen(("curl -s -D - -o /dev/null -X PUT -H 'Content-Range: bytes */*' -H 'Content-Length: 0' %s"):format(shq(uri)))
  local head = p:read("a")
  p:close()
  if head:match("^HTTP/%S+ 20[01]") then return math.huge, true end
  assert(head:match("^HTTP/%S+ 308"), "status query: " .. head)
  local last = head:match("\n[Rr]ange: bytes=0%-(%d+)")
  return last and tonumber(last) + 1 or 0, false
end

-- Sleeps until path exists (or the child finished, or the deadline).
local function wait_for(path, dir, deadline)
  while not exists(path) and not exists(dir .. "/done") and H.now() < deadline do rw.util.sleep(0.001) end
end

local function assert_same(got, want, what)
  assert(got, what .. ": no object on the server")
  assert(#got == #want, ("%s: size %d, want %d"):format(what, #got, #want))
  local r = C.rng(#want)
  for _ = 1, 64 do
    local i = r(1, #want)
    assert(got:byte(i) == want:byte(i), ("%s: byte at offset %d differs"):format(what, i - 1))
  end
  assert(got == want, what .. ": content differs")
end

describe("kill -9 / resume soak", function()
  local srv, tmp
  setup(function()
    srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -p " .. shq(tmp)))
  end)
  teardown(function()
    srv:stop()
    os.execute("rm -rf " .. shq(tmp))
  end)

  -- One trial: upload in a child, kill it, resume here, compare. Returns
  -- where the kill fell and whether the resume found the object finalized.
  local function trial(i, seed)
    local r = C.rng(seed)
    local size = r(6 * MiB, 12 * MiB)
    local chunk = r(1, 4) * 256 * KiB
    local cache = chunk * r(2, 4)
    local bandwidth = r(40, 80) * MiB
    -- "final": a delay line on the child's connection holds each reply
    -- ~latency, and the kill comes as soon as the object exists: the server
    -- finalized it, the child never heard (its state is behind).
    local mode = (i % 10 == 3 and "final") or (i % 4 == 0 and "complete") or (i % 5 == 1 and "early") or "random"
    local latency = mode == "final" and 0.04 or 0
    local dir = ("%s/t%d"):format(tmp, i)
    assert(os.execute("mkdir -p " .. shq(dir)))
    local name = "soak-" .. i
    local child = spawn({ shq(srv:url()), name, seed, size, chunk, cache, bandwidth, latency, shq(dir) }, dir)
    local ok, err = pcall(function()
      local deadline = H.now() + 30
      if mode == "early" then
        rw.util.sleep(r(0, 60) / 1000) -- the child saves its first state ~50 ms in
      elseif mode == "final" then
        wait_for(dir .. "/completing", dir, deadline)
        while not srv:object("b", name) and not exists(dir .. "/done") and H.now() < deadline do
          rw.util.sleep(0.001)
        end
      elseif mode == "complete" then
        wait_for(dir .. "/completing", dir, deadline)
        -- what is left to send then is at most the cache: up to ~1.5 x its time
        rw.util.sleep(r(0, math.floor(cache / bandwidth * 1500)) / 1000)
      else
        wait_for(dir .. "/writing", dir, deadline)
        rw.util.sleep(r(0, math.floor(size / bandwidth * 1000)) / 1000)
      end
    end)
    child.reap()
    if not ok then error(err, 0) end
    local errs = slurp(dir .. "/stderr")
    assert(not errs:find("traceback", 1, true) and not errs:find("reliablewriter error:", 1, true),
      "the child failed on its own: " .. errs)

    local state = C.read_state(dir .. "/state")
    local fell = (exists(dir .. "/done") and "after_done") or (exists(dir .. "/completing") and "during_complete")
      or (state and "mid_upload") or "before_state"
    local was_final, ahead = srv:object("b", name) ~= nil, false
    if state and not was_final then
      local held, final = server_holds(state.uri)
      was_final, ahead = final, not final and held > state.persisted
    end

    local data = C.data(seed, size)
    local sink = rw.gcs { bucket = "b", object = name, endpoint = srv:url() }
    local opts = { sink = sink, min_chunk_size = 256 * KiB, max_chunk_size = chunk, max_cache_size = cache,
                   retry = { min_wait = 0.005, max_wait = 0.05, total_wait = 10, seed = seed }, stall_timeout = 5 }
    local ctx = rw.context.background():with_timeout(30)
    local w = state and assert(rw.resume(ctx, state, opts)) or assert(rw.new(ctx, opts))
    local off = state and state.persisted or 0
    assert(off <= size, "state.persisted " .. off .. " is past the end " .. size)
    while off < size do
      local n = math.min(size - off, r(1, 512 * KiB))
      assert(w:WriteAt(off, data:sub(off + 1, off + n)))
      off = off + n
    end
    local obj = assert(w:Complete())
    assert(obj.size == size, "object size " .. tostring(obj.size))
    w:close()
    assert_same(srv:object("b", name), data, name)
    return fell, was_final, ahead
  end

  it(("%d trials: killed at random moments, resumed from the saved state, byte-identical"):format(TRIALS), function()
    local base = H.seed % 1000000007
    local counts = { before_state = 0, mid_upload = 0, during_complete = 0, after_done = 0 }
    local finals, aheads, t0 = 0, 0, H.now()
    for i = 1, TRIALS do
      local seed = (base + i * 7919) % 2147483647
      local ok, fell, was_final, ahead = pcall(trial, i, seed)
      if not ok then
        error(("trial %d (seed %d; RW_TEST_SEED=%d repeats the run): %s"):format(i, seed, H.seed, tostring(fell)), 0)
      end
      counts[fell] = counts[fell] + 1
      if was_final then finals = finals + 1 end
      if ahead then aheads = aheads + 1 end
    end
    io.stderr:write(("[soak] %d trials in %.1f s (%s): kills before the first state %d, mid-upload %d, " ..
      "during Complete %d, after the child finished %d; the resume found the server ahead of the state %d " ..
      "times, the object already finalized %d times\n"):format(
      TRIALS, H.now() - t0, LUA, counts.before_state, counts.mid_upload, counts.during_complete,
      counts.after_done, aheads, finals))
    if TRIALS >= 20 then
      assert(counts.mid_upload > 0, "no kill fell mid-upload")
      assert(counts.during_complete > 0, "no kill fell during Complete")
    end
  end)
end)
