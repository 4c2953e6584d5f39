-- Sink descriptors: configs checked strictly, live sinks made per writer in C.
local H = require "helpers"
local testbed = require "reliablewriter.testbed"
local core = require "reliablewriter.core"
local sinks = core.sinks

describe("sinks", function()
  it("makes gcs descriptors with all documented options", function()
    local d = sinks.gcs {
      bucket = "b", object = "dir/o", endpoint = "http://127.0.0.1:1",
      metadata = { contentType = "text/plain", metadata = { k = "v", n = 3 }, tags = { "a", "b" } },
      if_generation_match = 0, headers = { ["x-retry-test-id"] = "id-1" },
      connect_timeout = 2.5, token = "t", faults = { seed = 7 },
    }
    assert.is_true(sinks.is_sink(d))
    assert.equal("gcs", d:kind())
    assert.equal("sink gcs gs://b/dir/o", tostring(d))
    assert.equal(7, d:faults().seed)
    assert.is_nil(d.inner) -- inner() and stats() are the test bed's faulty descriptors' own
    assert.is_nil(d.stats)
  end)

  it("resumes a gcs session with session_uri alone", function()
    local d = sinks.gcs { session_uri = "http://127.0.0.1:1/upload/x", endpoint = "http://127.0.0.1:1" }
    assert.equal("gcs", d:kind())
  end)

  it("rejects unknown options naming them", function()
    local msg = H.raised(sinks.gcs, { bucket = "b", object = "o", buckett = "x" })
    assert.truthy(msg:find("unknown option 'buckett'", 1, true), msg)
    msg = H.raised(sinks.file, { path = "/tmp/x", mode = "w" })
    assert.truthy(msg:find("unknown option 'mode'", 1, true), msg)
    msg = H.raised(testbed.faulty, sinks.file { path = "/tmp/x" }, { p_err = 1 })
    assert.truthy(msg:find("unknown option 'p_err'", 1, true), msg)
  end)

  it("checks types and ranges", function()
    local function bad(opts, pat)
      local msg = H.raised(sinks.gcs, opts)
      assert.truthy(msg:find(pat, 1, true), msg)
    end
    bad({ object = "o" }, "'bucket' is required")
    bad({ bucket = "b" }, "'object' is required")
    bad({ bucket = 1, object = "o" }, "'bucket' must be a non-empty string")
    bad({ bucket = "b", object = "o", if_generation_match = -1 }, "if_generation_match")
    bad({ bucket = "b", object = "o", if_generation_match = 1.5 }, "if_generation_match")
    bad({ bucket = "b", object = "o", connect_timeout = 0 }, "connect_timeout")
    bad({ bucket = "b", object = "o", headers = { 1 } }, "headers")
    bad({ bucket = "b", object = "o", headers = { ["bad name"] = "v" } }, "header")
    bad({ bucket = "b", object = "o", metadata = "x" }, "metadata")
    bad({ bucket = "b", object = "o", metadata = { f = print } }, "metadata")
    bad({ bucket = "b", object = "o", faults = 3 }, "faults")
    assert.truthy(H.raised(sinks.file, {}):find("'path' is required", 1, true))
  end)

  it("wraps a descriptor in a faulty one with strict codes", function()
    local inner = sinks.file { path = "/tmp/never-written" }
    local f = testbed.faulty(inner, { seed = 42, p_error = 0.5, codes = { "net.reset", "http.503" },
                                    p_partial = 0.25, p_after = 0.25 })
    assert.equal("faulty", f:kind())
    assert.equal(inner, f:inner())
    local st = f:stats()
    assert.same({ puts = 0, queries = 0, injected = 0, partial = 0, after = 0 }, st)
    local msg = H.raised(testbed.faulty, inner, { codes = { "net.nope" } })
    assert.truthy(msg:find("not a known error code", 1, true), msg)
    msg = H.raised(testbed.faulty, inner, { p_error = 1.5 })
    assert.truthy(msg:find("p_error", 1, true), msg)
    msg = H.raised(testbed.faulty, inner, { p_partial = 0.7, p_after = 0.7 })
    assert.truthy(msg:find("p_partial", 1, true), msg)
    assert.truthy(H.raised(testbed.faulty, {}, {}):find("bad argument #1", 1, true))
    assert.is_nil(inner.stats) -- stats() is the faulty descriptor's own
    -- nested faulty descriptors are fine
    assert.equal("faulty", testbed.faulty(f, { p_error = 0 }):kind())
  end)

  it("descriptors survive collection of their inner references", function()
    local f = testbed.faulty(sinks.file { path = "/tmp/x" })
    collectgarbage() collectgarbage()
    assert.equal("file", f:inner():kind())
  end)
end)

-- The file sink never destroys what it did not create: a temp file beside the
-- target, renamed over it on Complete; only the temp file is ever removed.
describe("file sink safety", function()
  local rw = H.rw()
  local KiB = 1024
  local dir

  local ran, write, read, eventually = H.ran, H.write_file, H.read_file, H.eventually
  local function tmp_files() return H.tmp_files(dir) end
  local function kind(path)
    local p = io.popen("stat -c %F '" .. path .. "' 2>/dev/null")
    local k = p:read("l"); p:close(); return k
  end
  local function same(got, want, what)
    assert(got, what .. ": missing")
    assert.equal(#want, #got, what .. ": size (seed " .. H.seed .. ")")
    assert(got == want, what .. ": content differs (seed " .. H.seed .. ")")
  end
  local function new(path, opts)
    local o = { sink = rw.file { path = path }, max_cache_size = 256 * KiB, max_chunk_size = 256 * KiB,
                retry = { min_wait = 0.005, max_wait = 0.01, total_wait = 5 } }
    for k, v in pairs(opts or {}) do o[k] = v end
    return rw.new(rw.context.background(), o)
  end

  before_each(function()
    dir = H.tmp_dir("rw_sinks_spec")
    assert(dir and #dir > 0)
  end)
  after_each(function() assert(ran("rm -rf '" .. dir .. "'")) end)

  it("rw.new refuses a target that is not a regular file, naming it, and leaves it alone", function()
    local cases = { { dir .. "/fifo", "mkfifo '%s'", "FIFO", "fifo" },
                    { dir .. "/sub", "mkdir '%s'", "directory", "directory" },
                    { dir .. "/sock", "python3 -c \"import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])\" '%s'",
                      "socket", "socket" } }
    if ran(("mknod '%s' c 1 3 2>/dev/null"):format(dir .. "/dev")) then
      cases[#cases + 1] = { dir .. "/dev", nil, "character device", "character special file" }
    else
      io.stderr:write("(mknod not permitted here: the FIFO case stands for devices)\n")
    end
    for _, c in ipairs(cases) do
      local path, make, what, stat_kind = c[1], c[2], c[3], c[4]
      if make then assert(ran(make:format(path))) end
      local w, err = new(path)
      assert.is_nil(w, path)
      assert.equal("rw.invalid_argument", err.code, tostring(err))
      assert.truthy(err.message:find(path, 1, true), err.message)
      assert.truthy(err.message:find(what, 1, true), err.message)
      assert.truthy(kind(path):find(stat_kind, 1, true), path .. " is now " .. tostring(kind(path)))
    end
    assert.equal(0, tmp_files())
  end)

  it("a symlink target: the file it names is replaced and the link kept; a dangling link is refused", function()
    local old, data = H.random_bytes(10 * KiB), H.random_bytes(700 * KiB + 3)
    write(dir .. "/real.bin", old)
    assert(ran(("ln -s real.bin '%s/link.bin'"):format(dir)))
    local w = assert(new(dir .. "/link.bin"))
    assert(w:WriteAt(0, data))
    assert(w:Complete())
    w:close()
    assert.equal("symbolic link", kind(dir .. "/link.bin"))
    same(read(dir .. "/real.bin"), data, "the file the link names")
    assert(ran(("ln -s missing.bin '%s/dangling'"):format(dir)))
    local w2, err = new(dir .. "/dangling")
    assert.is_nil(w2)
    assert.equal("rw.invalid_argument", err.code)
    assert.truthy(err.message:find("symbolic link", 1, true), err.message)
    assert.equal(0, tmp_files())
  end)

  it("an aborted or collected upload leaves an existing target byte-identical and no temp file", function()
    local old, data = H.random_bytes(100 * KiB + 1), H.random_bytes(1024 * KiB)
    write(dir .. "/t.bin", old)
    for _, how in ipairs { "abort", "close", "gc" } do
      local w = assert(new(dir .. "/t.bin"))
      assert(w:WriteAt(0, data:sub(1, 600 * KiB)))
      assert.is_true(eventually(function() return w:stats().persisted >= 512 * KiB end, 5), how)
      same(read(dir .. "/t.bin"), old, how .. ": target during the upload (not truncated)")
      assert.equal(1, tmp_files(), how)
      if how == "abort" then w:Abort() elseif how == "close" then w:close() end
      w = nil
      collectgarbage(); collectgarbage()
      assert.is_true(eventually(function() return tmp_files() == 0 end, 5), how .. ": a temp file was left")
      same(read(dir .. "/t.bin"), old, how .. ": target after")
    end
  end)

  it("a failed upload leaves the target byte-identical; close removes the temp file", function()
    -- in a child process: the writer logs the failure at error level, and
    -- the log is captured here and checked
    local old = H.random_bytes(50 * KiB)
    write(dir .. "/t.bin", old)
    local lua = jit and "luajit" or "lua5.4"
    local cpath = jit and "build/luajit/?.so" or "build/lua5.4/?.so"
    local script = ([[
      local rw = require "reliablewriter"
      local testbed = require "reliablewriter.testbed"
      local function count() local p = io.popen("ls -A '%s'"); local n = 0
        for l in p:lines() do if l:match("%%.rwtmp$") then n = n + 1 end end; p:close(); return n end
      local sink = testbed.faulty(rw.file { path = "%s/t.bin" }, { seed = 1, p_error = 1, codes = { "http.400" } })
      local w = assert(rw.new(rw.context.background(), { sink = sink }))
      assert(w:WriteAt(0, ("x"):rep(300000)))
      local obj, err = w:Complete()
      print("complete", obj, err and err.code, "tmp", count())
      w:close()
      -- close() hands the temp file's removal to the pool and returns (it
      -- never waits): look until it is gone, for at most 5 s
      local t0 = rw.util.monotime()
      while count() > 0 and rw.util.monotime() - t0 < 5 do rw.util.sleep(0.01) end
      print("closed", "tmp", count())
    ]]):format(dir, dir)
    write(dir .. "/child.lua", script)
    local p = io.popen(("cd '%s' && LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s;;' %s '%s/child.lua' 2>&1")
      :format(os.getenv("PWD") or ".", cpath, lua, dir))
    local out = p:read("a"); p:close()
    assert.truthy(out:find("complete\tnil\thttp.400\ttmp\t1", 1, true), out)
    assert.truthy(out:find("closed\ttmp\t0", 1, true), out)
    assert.truthy(out:find("reliablewriter error: upload failed", 1, true), out)
    same(read(dir .. "/t.bin"), old, "target")
  end)

  it("a completed upload replaces the target atomically: a reader sees old or new, whole", function()
    local old, data = H.random_bytes(300 * KiB + 5), H.random_bytes(3 * 1024 * KiB + 11)
    write(dir .. "/t.bin", old)
    local reads, bad = 0, {}
    local function look()
      local got = read(dir .. "/t.bin")
      reads = reads + 1
      if got ~= old and got ~= data then bad[#bad + 1] = got and #got or "missing" end
    end
    local w = assert(new(dir .. "/t.bin", { on_progress = look }))
    for off = 0, #data - 1, 64 * KiB do
      assert(w:WriteAt(off, data:sub(off + 1, off + 64 * KiB)))
      look()
    end
    local obj, err = w:Complete()
    assert(obj, tostring(err))
    look()
    w:close()
    assert.equal(0, #bad, "partial reads of sizes " .. table.concat(bad, ", "))
    assert.is_true(reads > 10)
    same(read(dir .. "/t.bin"), data, "target")
    assert.equal(0, tmp_files())
  end)
end)
