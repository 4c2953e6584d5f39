-- w:write_file takes regular files only and never uploads bytes its checksum
-- does not cover: a file truncated or rewritten while its bytes are cached
-- fails the call with rw.source_changed (never SIGBUS), and no object or
-- target with mixed bytes exists.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local KiB, MiB = 1024, 1024 * 1024

local function tmp_dir()
  local p = io.popen("mktemp -d /tmp/rw_file_safety_XXXXXX")
  local d = p:read("l")
  p:close()
  assert(d and #d > 0, "mktemp -d failed")
  return d
end

local function ran(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0 -- Lua 5.4 / LuaJIT
end

local function sh(cmd) assert(ran(cmd), "command failed: " .. cmd) end

local function write(path, data)
  local f = assert(io.open(path, "wb")); f:write(data); f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a"); f:close(); return s
end

local function tmp_files(dir)
  local p = io.popen("ls -A '" .. dir .. "'")
  local n = 0
  for name in p:lines() do if name:match("%.rwtmp$") then n = n + 1 end end
  p:close()
  return n
end

local function eventually(fn, secs)
  local t0 = H.now()
  while H.now() - t0 < secs do
    if fn() then return true end
    rw.util.sleep(0.01)
  end
  return fn()
end

local function assert_same_bytes(got, want, what)
  assert(got, what .. ": no object")
  assert.equal(#want, #got, what .. ": size (seed " .. H.seed .. ")")
  for _ = 1, 64 do
    local i = math.random(1, math.max(1, #want))
    assert.equal(want:byte(i), got:byte(i), ("%s: byte at offset %d (seed %d)"):format(what, i - 1, H.seed))
  end
  assert(got == want, what .. ": content differs (seed " .. H.seed .. ")")
end

local function fast_retry()
  return { min_wait = 0.005, max_wait = 0.05, total_wait = 30, seed = H.seed % 100000 + 1 }
end

describe("write_file sources", function()
  local dir, w
  before_each(function()
    dir = tmp_dir()
    w = assert(rw.new(rw.context.background(), { sink = rw.file { path = dir .. "/out.bin" } }))
  end)
  after_each(function()
    w:Abort(); w:close()
    sh("rm -rf '" .. dir .. "'")
  end)

  local function refused(path, kind)
    local ok, err = w:write_file(0, path)
    assert.is_nil(ok)
    assert.equal("rw.invalid_argument", err.code, tostring(err))
    assert.truthy(err.message:find(path, 1, true), err.message)
    assert.truthy(err.message:find(kind, 1, true), err.message)
    assert.equal(0, w:stats().written)
    assert.equal("open", w:stats().state) -- the writer is untouched
  end

  it("refuses a /proc file (regular by mode, but made up on each read)", function()
    refused("/proc/self/status", "/proc")
  end)

  it("refuses a FIFO without opening it (a test that cannot hang)", function()
    sh("mkfifo '" .. dir .. "/fifo'")
    refused(dir .. "/fifo", "FIFO")
  end)

  it("refuses a directory, a socket and a device node made in a temp folder", function()
    refused(dir, "directory")
    sh("python3 -c \"import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])\" '" .. dir .. "/sock'")
    refused(dir .. "/sock", "socket")
    if ran("mknod '" .. dir .. "/dev' c 1 3 2>/dev/null") then
      refused(dir .. "/dev", "character device")
    else
      io.stderr:write("(mknod not permitted here: the FIFO case stands for devices)\n")
    end
  end)

  it("a missing file is io.error naming it; an unchanged file still uploads", function()
    local ok, err = w:write_file(0, dir .. "/missing")
    assert.is_nil(ok)
    assert.equal("io.error", err.code)
    assert.truthy(err.message:find(dir .. "/missing", 1, true))
    local data = H.random_bytes(100 * KiB + 7)
    write(dir .. "/src", data)
    assert(w:write_file(0, dir .. "/src"))
    assert(w:Complete())
    assert_same_bytes(read(dir .. "/out.bin"), data, "file sink")
  end)
end)

describe("write_file of a file that changes while its bytes are cached", function()
  local srv, dir, data
  local N = 32 * MiB

  setup(function()
    io.stderr:write(("[file_safety] 32 MiB random source, seed %d\n"):format(H.seed))
    data = H.random_bytes(N)
    srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
  end)
  teardown(function() srv:stop() end)
  before_each(function()
    dir = tmp_dir()
    write(dir .. "/src", data)
  end)
  after_each(function() sh("rm -rf '" .. dir .. "'") end)

  -- A writer on a slow link (16 MiB/s) with a small cache: write_file waits
  -- for room several times; `change` runs once, from on_progress (on this
  -- thread, inside the call), after 4 MiB are persisted.
  local function slow_writer(name, change, sink)
    local fired = false
    local profile = testbed.faults.profile { seed = H.seed % 1000 + 1, bandwidth = 16 * MiB }
    return assert(rw.new(rw.context.background(), {
      sink = sink or rw.gcs { bucket = "b", object = name, endpoint = srv:url(), faults = profile },
      max_cache_size = 8 * MiB, max_chunk_size = 2 * MiB, retry = fast_retry(), stall_timeout = 5,
      on_progress = function(st)
        if not fired and st.persisted >= 4 * MiB then fired = true; change() end
      end,
    })), function() return fired end
  end

  local function expect_changed(w, name, fired)
    local src = dir .. "/src"
    local lines, ok, err = H.capture_log(w.write_file, w, 0, src)
    assert.is_true(fired(), "the change never ran")
    assert.is_nil(ok, "write_file took a file that changed under it")
    assert.equal("rw.source_changed", err.code, tostring(err))
    assert.truthy(err.message:find(src, 1, true), err.message)
    assert.truthy(err.message:find("offset %d+"), err.message)
    -- the writer failed with the same error: its log line names the error's id
    assert.is_true(H.has_line(lines, "upload failed.*" .. err.id:gsub("%-", "%%-")), table.concat(lines, "\n"))
    local obj, cerr = w:Complete()
    assert.is_nil(obj, "an object was made from a file that changed")
    assert.equal("rw.source_changed", cerr.code, tostring(cerr))
    w:close()
    if name then assert.is_nil((srv:object("b", name))) end
  end

  it("truncated to half: the process survives, the call fails, no object exists", function()
    local w, fired = slow_writer("trunc", function()
      write(dir .. "/src", data:sub(1, math.floor(N / 2))) -- "w" truncates to 0, then half comes back
    end)
    expect_changed(w, "trunc", fired)
  end)

  it("overwritten in place (same size): the call fails, no object exists", function()
    local w, fired = slow_writer("overwrite", function()
      local f = assert(io.open(dir .. "/src", "r+b"))
      f:seek("set", 20 * MiB)
      f:write(H.random_bytes(64 * KiB))
      f:close()
    end)
    expect_changed(w, "overwrite", fired)
  end)

  it("replaced by rename: the call fails", function()
    local w, fired = slow_writer("renamed", function()
      write(dir .. "/src.new", data:sub(1, math.floor(N / 2)))
      assert(os.rename(dir .. "/src.new", dir .. "/src"))
    end)
    expect_changed(w, "renamed", fired)
  end)

  it("into a file sink: the existing target stays byte-identical, no temp file is left", function()
    local target = dir .. "/target.bin"
    local old = H.random_bytes(300 * KiB)
    write(target, old)
    local sink = testbed.faulty(rw.file { path = target }, { seed = 1, p_error = 0 })
    local w, fired = slow_writer(nil, function()
      write(dir .. "/src", data:sub(1, math.floor(N / 2)))
    end, sink)
    expect_changed(w, nil, fired)
    assert.is_true(eventually(function() return tmp_files(dir) == 0 end, 5), "a temp file was left")
    assert_same_bytes(read(target), old, "target")
  end)

  it("an unchanged file uploads byte-identical through the same slow writer", function()
    local w = slow_writer("same", function() end)
    assert(w:write_file(0, dir .. "/src"))
    local obj, err = w:Complete()
    assert(obj, tostring(err))
    assert.equal(N, obj.size)
    assert_same_bytes(srv:object("b", "same"), data, "same")
    w:close()
  end)

  it("pieces of an unchanged file at offsets land byte-identical", function()
    local w = assert(rw.new(rw.context.background(), {
      sink = rw.gcs { bucket = "b", object = "pieces", endpoint = srv:url() },
      max_cache_size = 4 * MiB, max_chunk_size = 1 * MiB, retry = fast_retry() }))
    local cut = math.random(1, N - 1)
    assert(w:write_file(0, dir .. "/src", 0, cut))
    assert(w:write_file(cut, dir .. "/src", cut))
    assert(w:Complete())
    assert_same_bytes(srv:object("b", "pieces"), data, "pieces (cut at " .. cut .. ")")
    w:close()
  end)
end)
