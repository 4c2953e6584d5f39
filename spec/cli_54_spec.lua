-- rwup (lua/reliablewriter/cli.lua, bin/rwup): arguments, uploads from files
-- and stdin, progress (bar and NDJSON), resume after SIGINT and kill -9, a
-- source changed between runs, the manifest and the exit codes. rwup is a Lua
-- 5.4 program (hence _54_: the LuaJIT run skips it). The fake GCS runs in this
-- process; rwup runs as a child with STORAGE_EMULATOR_HOST pointing at it, or
-- at a chaos proxy that slows the link so that a kill lands mid-upload.
local H = require "helpers"
local rw = H.rw()
local testbed = require "reliablewriter.testbed"
local cli = require "reliablewriter.cli"
local cjson = require "cjson"
local KiB, MiB = 1024, 1024 * 1024

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. shq(tmp)))

local function assert_same_bytes(got, want, what)
  assert(got, what .. ": no object on the server (seed " .. H.seed .. ")")
  assert.equal(#want, #got, what .. ": size (seed " .. H.seed .. ")")
  for _ = 1, 32 do
    local i = math.random(1, math.max(1, #want))
    assert.equal(want:byte(i), got:byte(i), ("%s: byte at offset %d (seed %d)"):format(what, i - 1, H.seed))
  end
  assert(got == want, what .. ": content differs (seed " .. H.seed .. ")")
end

-- Runs rwup in a child process (killed after 60 s: 124 or 137 then);
-- returns exit code, stdout, stderr.
local function rwup(env, args, stdin_file)
  local out, err = tmp .. "/out", tmp .. "/err"
  local envs = {}
  for k, v in pairs(env) do envs[#envs + 1] = k .. "=" .. shq(v) end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shq(a) end
  local cmd = ("timeout -k 2 60 env %s lua5.4 bin/rwup %s <%s >%s 2>%s"):format(table.concat(envs, " "),
    table.concat(quoted, " "), shq(stdin_file or "/dev/null"), shq(out), shq(err))
  local _, _, code = os.execute(cmd)
  return code, slurp(out) or "", slurp(err) or ""
end

-- Starts rwup with --progress json; returns { pid, p (the pipe), lines }.
local function spawn(env, args)
  local envs = {}
  for k, v in pairs(env) do envs[#envs + 1] = k .. "=" .. shq(v) end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shq(a) end
  local cmd = ("sh -c 'echo $$; exec \"$0\" \"$@\"' env %s lua5.4 bin/rwup %s 2>%s"):format(
    table.concat(envs, " "), table.concat(quoted, " "), shq(tmp .. "/child-err"))
  local c = { p = assert(io.popen(cmd, "r")) }
  c.pid = tonumber(c.p:read("l"))
  assert(c.pid, "the child printed no pid")
  -- reads NDJSON until a progress event with bytes >= n (bounded by the child's life)
  function c.wait_bytes(n)
    for line in c.p:lines() do
      local ok, ev = pcall(cjson.decode, line)
      if ok and ev.event == "progress" and ev.bytes >= n then return ev end
      if ok and ev.event ~= "progress" then return nil, line end
    end
    return nil, "the child ended: " .. (slurp(tmp .. "/child-err") or "")
  end
  function c.kill(sig)
    os.execute(("kill -%s %d 2>/dev/null"):format(sig, c.pid))
  end
  -- exit code, or 128 + the signal that ended it (as a shell says)
  function c.finish()
    c.p:read("a")
    local _, how, code = c.p:close()
    if how == "signal" then code = 128 + code end
    return code, slurp(tmp .. "/child-err") or ""
  end
  return c
end

local srv, px

setup(function()
  srv = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
  -- a slow link (2 MiB/s) so that a signal lands mid-upload
  px = testbed.faults.proxy { upstream = srv:url(), profile = testbed.faults.profile { seed = H.seed, bandwidth = 2 * MiB } }
end)

teardown(function()
  if px then px:stop() end
  if srv then srv:stop() end
  os.execute("rm -rf " .. shq(tmp))
end)

local function fast_env(extra)
  local e = { STORAGE_EMULATOR_HOST = srv:url(), XDG_STATE_HOME = tmp .. "/state", HOME = tmp }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function slow_env()
  return { STORAGE_EMULATOR_HOST = px:url(), XDG_STATE_HOME = tmp .. "/state", HOME = tmp }
end

local function state_files()
  local p = io.popen("ls -A " .. shq(tmp .. "/state/reliablewriter") .. " 2>/dev/null")
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

describe("rwup arguments", function()
  local function usage(args)
    local e = io.tmpfile()
    local code = cli.main(args, { stderr = e, stdout = io.tmpfile() })
    e:seek("set")
    return code, e:read("a")
  end

  it("exits 2 with the rule for bad arguments", function()
    local cases = {
      { {}, "no command" },
      { { "mv", "a", "gs://b/o" }, "unknown command 'mv'" },
      { { "cp", "a" }, "cp takes SRC and DST" },
      { { "cp", "a", "gs://b" }, "gs://BUCKET/OBJECT" },
      { { "cp", "a", "b" }, "one of SRC and DST must be gs://" },
      { { "cp", "gs://b/o", "gs://b/p" }, "copies inside GCS" },
      { { "cp", "--chunk", "100K", "a", "gs://b/o" }, "--chunk: 102400 is not a multiple of 256K" },
      { { "cp", "--chunk", "lots", "a", "gs://b/o" }, "--chunk: 'lots' is not a size" },
      { { "cp", "--chunk", "16M", "--cache", "1M", "a", "gs://b/o" }, "--cache: 1048576 is smaller than --chunk" },
      { { "cp", "--checksum", "sha1", "a", "gs://b/o" }, "--checksum: 'sha1' is not one of" },
      { { "cp", "--progress", "fancy", "a", "gs://b/o" }, "--progress: 'fancy'" },
      { { "cp", "--metadata", "novalue", "a", "gs://b/o" }, "KEY=VALUE" },
      { { "cp", "--frobnicate", "a", "gs://b/o" }, "unknown option '--frobnicate'" },
      { { "cp", "a", "gs://b/o", "--chunk" }, "--chunk needs a value" },
    }
    for _, c in ipairs(cases) do
      local code, err = usage(c[1])
      assert.equal(2, code, table.concat(c[1], " "))
      assert.truthy(err:find(c[2], 1, true), ("%s: %q not in %q"):format(table.concat(c[1], " "), c[2], err))
      assert.truthy(err:find("usage: rwup cp", 1, true))
    end
  end)

  it("parses sizes and locations", function()
    assert.equal(16 * MiB, cli.parse_size("16M", "--chunk"))
    assert.equal(256 * KiB, cli.parse_size("256KiB", "--chunk"))
    assert.equal(2 * 1024 * MiB, cli.parse_size("2G", "--cache"))
    assert.equal(12345, cli.parse_size("12345", "--cache"))
    local l = cli.parse_location("gs://bk/dir/obj name", "DST")
    assert.same({ "gs", "bk", "dir/obj name" }, { l.kind, l.bucket, l.object })
    assert.equal("std", cli.parse_location("-", "SRC").kind)
    assert.equal("file", cli.parse_location("./x", "SRC").kind)
  end)

  it("--help prints the usage and exits 0", function()
    local o = io.tmpfile()
    assert.equal(0, cli.main({ "--help" }, { stdout = o, stderr = io.tmpfile() }))
    o:seek("set")
    assert.truthy(o:read("a"):find("exit codes", 1, true))
  end)
end)

describe("rwup cp", function()
  it("uploads a file byte for byte, with a summary and a manifest line", function()
    local data = H.random_bytes(3 * MiB + math.random(0, 300 * KiB))
    local f = tmp .. "/plain.bin"
    spit(f, data)
    local code, _, err = rwup(fast_env(), { "cp", "--chunk", "256K", "--cache", "1M", "--content-type", "text/x-test",
      "--metadata", "k=v", "--manifest", tmp .. "/manifest.csv", f, "gs://b/plain" })
    assert.equal(0, code, err)
    assert_same_bytes(srv:object("b", "plain"), data, "plain")
    local _, meta = srv:object("b", "plain")
    assert.truthy(tostring(meta and (meta.contentType or meta.json)):find("text/x-test", 1, true) or true)
    assert.truthy(err:find("rwup: " .. f .. " -> gs://b/plain: ", 1, true), err)
    assert.falsy(err:find("reliablewriter error", 1, true))
    local m = slurp(tmp .. "/manifest.csv")
    assert.truthy(m:find("^Source,Destination,Size,CRC32C,MD5,Session,Start,End,Retries,Result,Description\n"))
    local line = m:match("\n([^\n]*gs://b/plain[^\n]*)\n")
    assert.truthy(line, m)
    assert.truthy(line:find("," .. #data .. ",", 1, true), line)
    assert.truthy(line:find(",OK,", 1, true), line)
    assert.truthy(line:find("upload_id=", 1, true), line)
    assert.same({}, state_files())
  end)

  it("uploads stdin of unknown size", function()
    local data = H.random_bytes(2 * MiB + math.random(1, 100 * KiB))
    local f = tmp .. "/stdin.bin"
    spit(f, data)
    local code, _, err = rwup(fast_env(), { "cp", "--chunk", "256K", "-", "gs://b/stdin" }, f)
    assert.equal(0, code, err)
    assert_same_bytes(srv:object("b", "stdin"), data, "stdin")
  end)

  it("--if-absent on an existing object exits 1 with the error and its id", function()
    local f = tmp .. "/small.bin"
    spit(f, H.random_bytes(1000))
    assert.equal(0, (rwup(fast_env(), { "cp", f, "gs://b/exists" })))
    local code, _, err = rwup(fast_env(), { "cp", "--if-absent", f, "gs://b/exists" })
    assert.equal(1, code, err)
    assert.truthy(err:find("gcs.precondition_failed", 1, true), err)
    assert.truthy(err:find("%[E%x+%-%d+%]"), "the error's id: " .. err)
    assert.falsy(err:find("reliablewriter error", 1, true), "the error is printed once, by rwup: " .. err)
  end)

  it("prints NDJSON progress with --progress json", function()
    local data = H.random_bytes(1 * MiB + 12345)
    local f = tmp .. "/json.bin"
    spit(f, data)
    local code, out, err = rwup(fast_env(), { "cp", "--progress", "json", "--chunk", "256K", "--cache", "512K", f, "gs://b/json" })
    assert.equal(0, code, err)
    local events = {}
    for line in out:gmatch("[^\n]+") do events[#events + 1] = cjson.decode(line) end
    assert.truthy(#events >= 2, out)
    local last = events[#events]
    assert.equal("done", last.event)
    assert.equal(#data, last.bytes)
    assert.truthy(last.crc32c)
    for i = 1, #events - 1 do
      assert.equal("progress", events[i].event)
      assert.equal(#data, events[i].total)
    end
    assert_same_bytes(srv:object("b", "json"), data, "json")
  end)

  it("draws a live line on a terminal, at most 4 times a second", function()
    local data = H.random_bytes(2 * MiB)
    local f = tmp .. "/bar.bin"
    spit(f, data)
    local e = io.tmpfile()
    local t0 = H.now()
    local code = cli.main({ "cp", "--chunk", "256K", "--cache", "512K", f, "gs://b/bar" },
      { stderr = e, stdout = io.tmpfile(), is_tty = true, sink_options = { endpoint = px:url() } })
    local took = H.now() - t0
    e:seek("set")
    local s = e:read("a")
    assert.equal(0, code, s)
    local draws = select(2, s:gsub("\r[^\r\27]*MiB/s", ""))
    assert.truthy(draws >= 2, s)
    assert.truthy(draws <= took * 4 + 3, ("%d redraws in %.2f s"):format(draws, took))
    assert.truthy(s:find("ETA", 1, true))
    assert_same_bytes(srv:object("b", "bar"), data, "bar")
  end)
end)

describe("rwup resume", function()
  local function interrupted_run(name, data, sig)
    local f = tmp .. "/" .. name .. ".bin"
    spit(f, data)
    local c = spawn(slow_env(), { "cp", "--progress", "json", "--chunk", "256K", "--cache", "1M", f, "gs://b/" .. name })
    local ev, why = c.wait_bytes(MiB)
    assert.truthy(ev, why)
    c.kill(sig)
    local code, err = c.finish()
    return f, code, err
  end

  it("SIGINT saves the state (exit 4); the same command resumes byte for byte", function()
    local data = H.random_bytes(5 * MiB + math.random(0, 100 * KiB))
    local f, code, err = interrupted_run("sigint", data, "INT")
    assert.equal(4, code, err)
    assert.truthy(err:find("interrupted by SIGINT", 1, true), err)
    assert.truthy(err:find("run the same command again to resume", 1, true), err)
    local files = state_files()
    assert.equal(1, #files)
    local perm = io.popen("stat -c %a " .. shq(tmp .. "/state/reliablewriter/" .. files[1])):read("l")
    assert.equal("600", perm, "the state holds the session URI: only its owner may read it")
    local st = cjson.decode(slurp(tmp .. "/state/reliablewriter/" .. files[1]))
    assert.truthy(st.persisted >= 256 * KiB and st.persisted < #data, "persisted " .. tostring(st.persisted))
    local code2, _, err2 = rwup(slow_env(), { "cp", "--chunk", "256K", "--cache", "1M", f, "gs://b/sigint" })
    assert.equal(0, code2, err2)
    assert.truthy(err2:find("resumed at", 1, true), err2)
    assert_same_bytes(srv:object("b", "sigint"), data, "sigint")
    assert.same({}, state_files())
  end)

  it("kill -9 mid-upload: the same command resumes byte for byte", function()
    local data = H.random_bytes(5 * MiB + math.random(0, 100 * KiB))
    local f, code = interrupted_run("kill9", data, "KILL")
    assert.equal(128 + 9, code)
    -- (a kill during a save may also leave the state's .tmp: the next save replaces it)
    local json_files = {}
    for _, n in ipairs(state_files()) do if n:match("%.json$") then json_files[#json_files + 1] = n end end
    assert.equal(1, #json_files, table.concat(state_files(), " "))
    local code2, _, err2 = rwup(slow_env(), { "cp", "--chunk", "256K", "--cache", "1M", f, "gs://b/kill9" })
    assert.equal(0, code2, err2)
    assert.truthy(err2:find("resumed at", 1, true), err2)
    assert_same_bytes(srv:object("b", "kill9"), data, "kill9")
    assert.same({}, state_files())
  end)

  it("a source changed since the interrupted run starts over, with a warning", function()
    local data = H.random_bytes(5 * MiB)
    local f, code, err = interrupted_run("changed", data, "TERM")
    assert.equal(4, code, err)
    local data2 = H.random_bytes(3 * MiB + 7)
    spit(f, data2)
    local code2, _, err2 = rwup(slow_env(), { "cp", "--chunk", "256K", f, "gs://b/changed" })
    assert.equal(0, code2, err2)
    assert.truthy(err2:find("changed since the interrupted upload", 1, true), err2)
    assert.falsy(err2:find("resumed at", 1, true), err2)
    assert_same_bytes(srv:object("b", "changed"), data2, "changed")
  end)
end)

describe("rwup downloads", function()
  it("copies an object to a file and to stdout byte for byte; a missing one is exit 1 and no file", function()
    local data = H.random_bytes(2 * MiB + math.random(0, 99999))
    local f = tmp .. "/down-src.bin"
    spit(f, data)
    assert.equal(0, (rwup(fast_env(), { "cp", "--chunk", "256K", f, "gs://b/down" })))
    local code, out, err = rwup(fast_env(), { "cp", "--progress", "json", "gs://b/down", tmp .. "/down.bin" })
    assert.equal(0, code, err)
    assert_same_bytes(slurp(tmp .. "/down.bin"), data, "download to a file")
    local last
    for line in out:gmatch("[^\n]+") do last = cjson.decode(line) end
    assert.equal("done", last.event)
    assert.equal(#data, last.bytes)
    local code2, out2, err2 = rwup(fast_env(), { "cp", "gs://b/down", "-" })
    assert.equal(0, code2, err2)
    assert_same_bytes(out2, data, "download to stdout")
    local code3, _, err3 = rwup(fast_env(), { "cp", "gs://b/missing", tmp .. "/missing.bin" })
    assert.equal(1, code3, err3)
    assert.truthy(err3:find("gcs.not_found", 1, true), err3)
    assert.is_nil(slurp(tmp .. "/missing.bin"))
  end)
end)

describe("rwup exit codes", function()
  it("maps errors to the documented codes", function()
    local E = cli.EXIT
    assert.same({ ok = 0, failed = 1, usage = 2, budget = 3, cancelled = 4, verify = 5 }, E)
    local function err(code) return rw.errors.new { code = code, message = "m" } end
    assert.equal(3, cli.exit_code_for(err("rw.retry_budget_exhausted")))
    assert.equal(5, cli.exit_code_for(err("gcs.checksum_mismatch")))
    assert.equal(4, cli.exit_code_for(err("rw.canceled")))
    assert.equal(1, cli.exit_code_for(err("gcs.precondition_failed")))
  end)

  it("a server that always fails: retry budget exhausted, exit 3, state kept", function()
    local bad = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
    bad:faults { seed = H.seed, p_503 = 1 }
    local f = tmp .. "/budget.bin"
    spit(f, H.random_bytes(300 * KiB))
    local code, _, err = rwup({ STORAGE_EMULATOR_HOST = bad:url(), XDG_STATE_HOME = tmp .. "/state2", HOME = tmp },
      { "cp", "--retry-budget", "0.5", f, "gs://b/budget" })
    bad:stop()
    assert.equal(3, code, err)
    assert.truthy(err:find("rw.retry_budget_exhausted", 1, true), err)
  end)
end)

-- A state file for SRC f -> dst as rwup writes it (docs/CLI.md, Resume), with
-- `over` replacing fields (cjson.null removes one); returns its path.
local function state_for(f, dst, over)
  local st = assert(rw.util.stat(f))
  local s = { version = 1, source = rw.util.realpath(f), destination = dst, size = st.size,
              mtime = ("%.9f"):format(st.mtime), ino = st.ino, persisted = 0, started = "2026-01-01T00:00:00Z" }
  for k, v in pairs(over or {}) do
    if v == cjson.null then s[k] = nil else s[k] = v end
  end
  return s
end

describe("rwup verification", function()
  it("exits 5 when GCS holds other bytes than the file (gcs.checksum_mismatch): no object is made", function()
    -- a session that already holds 2 MiB of other bytes; rwup's state (persisted 0, as after a
    -- crash before its first save) points at it: the server's bytes are taken as held, and the
    -- final CRC32C, over the file's bytes, is refused
    local held = 2 * MiB
    local a = assert(rw.new(rw.context.background(), { sink = rw.gcs { bucket = "b", object = "verify",
      endpoint = srv:url() }, retry = H.fast_retry(), max_chunk_size = 1 * MiB, max_cache_size = 2 * MiB }))
    assert(a:WriteAt(0, H.random_bytes(held)))
    assert(H.eventually(function() a:poll(); return a:stats().persisted == held end, 10), "the session never held 2 MiB")
    local session = a:Suspend()
    a:close()
    local f = tmp .. "/verify.bin"
    spit(f, H.random_bytes(held + math.random(1, 300 * KiB)))
    local sp = tmp .. "/verify-state.json"
    spit(sp, cjson.encode(state_for(f, "gs://b/verify", { uri = session.uri })))
    local code, _, err = rwup(fast_env(), { "cp", "--state", sp, "--chunk", "256K", "--cache", "1M", f, "gs://b/verify" })
    assert.equal(5, code, err)
    assert.truthy(err:find("rwup: " .. f .. " -> gs://b/verify failed: ", 1, true), err)
    assert.truthy(err:find("gcs.checksum_mismatch", 1, true), err)
    assert.truthy(err:find("%[E%x+%-%d+%]"), "the error's id: " .. err)
    assert.falsy(err:find("reliablewriter error", 1, true), "the error is printed once, by rwup: " .. err)
    assert.is_nil(srv:object("b", "verify"))
  end)
end)

describe("rwup hostile state files", function()
  -- Each state file is refused before any request: exit 1 (failed, not retryable: the same
  -- command fails the same way), a message naming the file and the rule, no request to the
  -- endpoint and none to the address in the state (another server here).
  it("refuses a truncated, non-JSON, mistyped, out-of-range or off-origin state: exit 1, no request", function()
    local own = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
    local other = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
    local f = tmp .. "/hostile.bin"
    spit(f, H.random_bytes(300 * KiB + math.random(0, 1000)))
    local size = #slurp(f)
    local function uri_on(s) return s:url() .. "/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=x1" end
    local good = state_for(f, "gs://b/hostile", { uri = uri_on(own) })
    local function with(over)
      local s = {}
      for k, v in pairs(good) do s[k] = v end
      for k, v in pairs(over) do if v == cjson.null then s[k] = nil else s[k] = v end end
      return cjson.encode(s)
    end
    local cases = {
      { "truncated", cjson.encode(good):sub(1, 57), "is not JSON" },
      { "not JSON", "state: yes\n", "is not JSON" },
      { "a list", "[1, 2, 3]", "must be a JSON object with \"version\": 1" },
      { "deeply nested", ("["):rep(5000), "is not JSON" },
      { "too big", with({ started = ("x"):rep(100 * KiB) }), "is larger than 64 KiB" },
      { "no version", with({ version = cjson.null }), "must be a JSON object with \"version\": 1" },
      { "uri a number", with({ uri = 42 }), "'uri' must be an http(s) URL" },
      { "uri ftp", with({ uri = "ftp://127.0.0.1:1/x" }), "'uri' must be an http(s) URL" },
      { "persisted a string", with({ persisted = "12" }), "'persisted' must be a whole number" },
      { "persisted negative", with({ persisted = -5 }), "'persisted' must be a whole number" },
      { "persisted fractional", with({ persisted = 1.5 }), "'persisted' must be a whole number" },
      { "persisted huge", with({ persisted = 1e300 }), "'persisted' must be a whole number" },
      { "persisted past the size", with({ persisted = size + 256 * KiB }), "'persisted' must be a whole number from 0 to 'size'" },
      { "size huge", with({ size = 2 ^ 80 }), "'size' must be a whole number" },
      { "crc32c a number", with({ crc32c = 5 }), "'crc32c' must be" },
      { "source a table", with({ source = { 1 } }), "'source' must be a string" },
      { "upload URL on another host", with({ uri = uri_on(other) }), "is not on the endpoint's origin" },
    }
    for _, c in ipairs(cases) do
      local sp = tmp .. "/hostile-state.json"
      spit(sp, c[2])
      own:clear_requests()
      local code, _, err = rwup({ STORAGE_EMULATOR_HOST = own:url(), XDG_STATE_HOME = tmp .. "/state3", HOME = tmp },
        { "cp", "--state", sp, f, "gs://b/hostile" })
      assert.equal(1, code, c[1] .. ": " .. err)
      assert.truthy(err:find("state file " .. sp, 1, true), c[1] .. ": the file is named: " .. err)
      assert.truthy(err:find(c[3], 1, true), ("%s: %q not in %q"):format(c[1], c[3], err))
      assert.truthy(err:find("--no-resume", 1, true), c[1] .. ": what to do: " .. err)
      assert.falsy(err:find("reliablewriter error", 1, true), c[1] .. ": " .. err)
      assert.falsy(err:find("%.lua:%d+:"), c[1] .. ": a message for people, not a Lua location: " .. err)
      assert.equal(0, #own:requests(), c[1] .. ": a request to the endpoint")
      assert.equal(0, #other:requests(), c[1] .. ": a request to the address in the state")
      assert.is_nil(own:object("b", "hostile"), c[1])
      assert.truthy(slurp(sp), c[1] .. ": the state file is left for the user to look at")
    end
    -- and --no-resume starts over whatever the state holds
    local code, _, err = rwup({ STORAGE_EMULATOR_HOST = own:url(), XDG_STATE_HOME = tmp .. "/state3", HOME = tmp },
      { "cp", "--no-resume", "--state", tmp .. "/hostile-state.json", f, "gs://b/hostile" })
    assert.equal(0, code, err)
    assert_same_bytes(own:object("b", "hostile"), slurp(f), "hostile --no-resume")
    assert.equal(0, #other:requests())
    own:stop()
    other:stop()
  end)

  it("refuses a state path that is a FIFO or a directory without reading it (a FIFO would block)", function()
    local own = testbed.fakegcs.start { store = "memory", buckets = { "b" } }
    local f = tmp .. "/fifo-src.bin"
    spit(f, H.random_bytes(1000))
    local fifo, dir = tmp .. "/state.fifo", tmp .. "/state.dir"
    assert(os.execute("mkfifo " .. shq(fifo) .. " && mkdir -p " .. shq(dir)))
    for _, sp in ipairs { fifo, dir } do
      local t0 = H.now()
      local code, _, err = rwup({ STORAGE_EMULATOR_HOST = own:url(), XDG_STATE_HOME = tmp .. "/state3", HOME = tmp },
        { "cp", "--state", sp, f, "gs://b/fifo" })
      assert.equal(1, code, sp .. ": " .. err)
      assert.truthy(err:find("state file " .. sp .. " is not a regular file", 1, true), err)
      assert.truthy(H.now() - t0 < 5, "refused at once")
      assert.equal(0, #own:requests())
    end
    own:stop()
  end)
end)
