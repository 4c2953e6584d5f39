-- w:write_file takes regular files only and never uploads bytes its checksum
-- does not cover: a file truncated or rewritten while its bytes are cached
-- fails the call with rw.source_changed (never SIGBUS), and no object or
-- target with mixed bytes exists.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local rw = H.rw()
local KiB, MiB = 1024, 1024 * 1024

local function tmp_dir() return H.tmp_dir("rw_file_safety") end
local ran, write, read, tmp_files, eventually = H.ran, H.write_file, H.read_file, H.tmp_files, H.eventually

local function sh(cmd) assert(ran(cmd), "command failed: " .. cmd) end

local assert_same_bytes, fast_retry = H.assert_same_bytes, H.fast_retry

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
