-- Shared logic for the wrk benchmark scripts (Debian wrk 4.1, LuaJIT).
--
-- wrk gives every thread its own Lua state and runs setup()/done() in a
-- separate main state; the only bridge between them is thread:set/get,
-- which copies values. Most of the shape of this file follows from that.
--
-- Environment: BENCH_DATA (the op's data file), BENCH_TOKEN (bearer token),
-- BENCH_RUN (run id, part of every Idempotency-Key), BENCH_OP (name echoed in
-- the result); BENCH_WRK_DIR only serves the op scripts to find this file.
-- Output: one "BENCH_RESULT {json}" line and one human-readable line.

local M = {}

-- A Lua error while wrk loads a script is printed and then ignored (wrk goes
-- on benchmarking GET /), and one inside a callback aborts with a bare PANIC,
-- so configuration mistakes exit explicitly with a readable message.
local function fatal(msg)
  io.stderr:write("bench/wrk: ", msg, "\n")
  os.exit(2)
end

local function env(name, required)
  local v = os.getenv(name)
  if v == "" then v = nil end
  if not v and required then fatal(name .. " is not set") end
  return v
end

-- wrk parses "1k"-style counts with a decimal scale.
local function metric(s)
  local n, unit = tostring(s):match("^(%d+)([kKmMgG]?)$")
  if not n then return nil end
  local scale = { [""] = 1, k = 1e3, m = 1e6, g = 1e9 }
  return tonumber(n) * scale[unit:lower()]
end

-- The thread count must be known in setup(), before the later threads
-- exist (wrk calls setup+init for thread i and starts it before thread i+1
-- is even created), but wrk does not expose -t to Lua. So read wrk's own
-- argv, following getopt_long's rules: "-t4", "-t 4", "-Lt4",
-- "--threads=4", "--threads 4" and unambiguous prefixes like "--thr 4".
local function wrk_options()
  local f = io.open("/proc/self/cmdline", "rb")
  if not f then fatal("cannot read /proc/self/cmdline to learn wrk's -t") end
  local argv = {}
  for a in f:read("*a"):gmatch("([^%z]*)%z") do argv[#argv + 1] = a end
  f:close()
  local takes_arg = "tcdsHT"
  local longs = { threads = "t", connections = "c", duration = "d", script = "s",
                  header = "H", timeout = "T", latency = "L", help = "h", version = "v" }
  local opts, i = { t = "2", c = "10" }, 2   -- wrk's defaults
  while i <= #argv do
    local a, opt, val = argv[i], nil, nil
    if a == "--" then break end
    if a:sub(1, 2) == "--" then
      local name, v = a:match("^%-%-([^=]*)=(.*)$")
      name, val = name or a:sub(3), v
      for full, short in pairs(longs) do
        if name ~= "" and full:sub(1, #name) == name then opt = short end
      end
      if opt and takes_arg:find(opt, 1, true) and not val then i = i + 1; val = argv[i] end
    elseif a:sub(1, 1) == "-" then
      for j = 2, #a do
        local ch = a:sub(j, j)
        if takes_arg:find(ch, 1, true) then
          opt, val = ch, a:sub(j + 1)
          if val == "" then i = i + 1; val = argv[i] end
          break
        end
      end
    end
    if opt and val then opts[opt] = val end
    i = i + 1
  end
  return { threads = metric(opts.t), connections = metric(opts.c) }
end

local function json_string(s)
  return '"' .. tostring(s):gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- spec fields:
--   op       name used in the output (BENCH_OP overrides it)
--   method   "GET" or "POST"
--   path     fixed request path (no data file), or
--   target   function(line) -> path, body   (the op reads BENCH_DATA)
--   public   true: no Authorization header (healthz)
function M.run(spec)
  local op = env("BENCH_OP") or spec.op
  local post = spec.method == "POST"

  -- ---- main state: setup() and done() ------------------------------------
  local threads, blobs, counts, opts = {}, nil, nil, nil
  -- Without a run id, keys from an earlier run would replay stored answers,
  -- so fall back to one that differs per run.
  local run = env("BENCH_RUN") or ("t" .. os.time())

  -- Reads BENCH_DATA once, checks every line, and deals the lines out to
  -- the threads by (line_number % nthreads), one newline-joined string per
  -- thread. This runs in the first setup() call, before any thread starts.
  local function load(nthreads)
    local path = env("BENCH_DATA", true)
    local f = io.open(path, "rb") or fatal("cannot open BENCH_DATA " .. path)
    local buckets = {}
    for k = 1, nthreads do buckets[k] = {} end
    local n = 0
    for line in f:lines() do
      if line:byte(-1) == 13 then line = line:sub(1, -2) end   -- CRLF files
      if line:find("%S") then
        if not spec.target(line) then
          fatal(string.format("%s line %d is not a valid %s line: %.80s", path, n + 1, op, line))
        end
        local b = buckets[n % nthreads + 1]
        b[#b + 1] = line
        n = n + 1
      end
    end
    f:close()
    if n < nthreads then
      fatal(string.format("%s has %d lines, fewer than the %d threads", path, n, nthreads))
    end
    blobs, counts = {}, {}
    for k = 1, nthreads do
      blobs[k], counts[k] = table.concat(buckets[k], "\n"), #buckets[k]
    end
  end

  function setup(thread)
    if not opts then
      opts = wrk_options()
      if not opts.threads or opts.threads < 1 then fatal("cannot parse wrk -t") end
      if spec.target then load(opts.threads) end
    end
    local index = #threads
    threads[index + 1] = thread
    thread:set("thread_index", index)
    thread:set("thread_count", opts.threads)
    thread:set("run_id", run)
    if blobs then
      if not blobs[index + 1] then fatal("wrk runs more threads than -t said") end
      -- setup()+init() of thread i run while threads 0..i-1 already send
      -- requests, before wrk starts its clock; their extra requests inflate
      -- rps. Handing over one string (not a table of lines, and not a file
      -- to re-read) keeps that window to a few milliseconds per thread.
      thread:set("data_blob", blobs[index + 1])
      thread:set("line_count", counts[index + 1])
      blobs[index + 1] = nil
    end
  end

  function done(summary, latency, requests)
    local statuses, exhausted, reused, lines = {}, 0, 0, 0
    for _, t in ipairs(threads) do
      -- Statuses come back as one number per code, not as a table: wrk 4.1's
      -- thread:get of a table pops one value too many off the thread's stack.
      for code = 100, 599 do
        local c = t:get("status_" .. code)
        if c then statuses[code] = (statuses[code] or 0) + c end
      end
      exhausted = exhausted + (t:get("exhausted") or 0)
      reused = reused + (t:get("reused") or 0)
      lines = lines + (t:get("line_count") or 0)
    end
    if #threads ~= opts.threads then
      io.stderr:write("bench/wrk: parsed -t ", opts.threads, " but wrk ran ", #threads, " threads\n")
    end

    local secs = summary.duration / 1e6
    local function ms(us)   -- JSON has no NaN/inf
      if us ~= us or us == math.huge then return "null" end
      return string.format("%.3f", us / 1000)
    end
    local codes, st, st_h = {}, {}, {}
    for code in pairs(statuses) do codes[#codes + 1] = code end
    table.sort(codes)
    for _, code in ipairs(codes) do
      st[#st + 1] = string.format('"%d":%d', code, statuses[code])
      st_h[#st_h + 1] = string.format("%d=%d", code, statuses[code])
    end
    local e = summary.errors
    local p = {}
    for _, q in ipairs({ 50, 90, 99, 99.9 }) do p[q] = ms(latency:percentile(q)) end

    print("BENCH_RESULT {" .. table.concat({
      '"op":' .. json_string(op),
      '"run":' .. json_string(run),
      string.format('"threads":%d,"connections":%d', #threads, opts.connections or 0),
      string.format('"requests":%d,"duration_s":%.3f,"rps":%.2f',
                    summary.requests, secs, summary.requests / secs),
      '"latency_ms":{' .. table.concat({
        '"mean":' .. ms(latency.mean), '"p50":' .. p[50], '"p90":' .. p[90],
        '"p99":' .. p[99], '"p99_9":' .. p[99.9], '"max":' .. ms(latency.max) }, ",") .. "}",
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}',
                    e.connect, e.read, e.write, e.timeout, e.status),
      '"status":{' .. table.concat(st, ",") .. "}",
      string.format('"lines":%d,"exhausted":%d,"reused":%d', lines, exhausted, reused),
    }, ",") .. "}")
    print(string.format(
      "bench %s: %d req in %.2fs = %.1f req/s | latency ms mean %s p50 %s p90 %s p99 %s p99.9 %s max %s"
        .. " | status %s | socket errors c/r/w/t %d/%d/%d/%d | lines %d exhausted %d reused %d",
      op, summary.requests, secs, summary.requests / secs, ms(latency.mean), p[50], p[90], p[99],
      p[99.9], ms(latency.max), table.concat(st_h, " "), e.connect, e.read, e.write, e.timeout,
      lines, exhausted, reused))
  end

  -- ---- thread states: init(), request(), response() ------------------------
  local blob, pos, seq, base, headers, status_key = nil, 1, 0, nil, {}, {}
  local key_prefix, probe = nil, false

  function init(args)
    exhausted, reused = 0, 0   -- globals, read by done() via thread:get
    line_count = line_count or 0

    -- Copy wrk.headers so Host and any -H headers from the command line stay.
    for k, v in pairs(wrk.headers) do headers[k] = v end
    if not spec.public then headers["Authorization"] = "Bearer " .. env("BENCH_TOKEN", true) end
    if post then headers["Content-Type"] = "application/json" end

    -- A path in the URL (http://host:port/prefix) is kept as a prefix.
    base = wrk.path:gsub("/+$", "")

    if not spec.target then
      -- Static request: wrk builds it once from these after init().
      wrk.method, wrk.path = spec.method, base .. spec.path
      return
    end

    blob, data_blob = data_blob, nil
    key_prefix = string.format("bench-%s-%d-", run_id, thread_index)
    -- wrk 4.1 calls request() once on thread 0 to validate it and never sends
    -- that request; let that call only peek so no line or key is lost.
    probe = (thread_index == 0)
  end

  -- Defined only for data ops: once request() exists wrk builds every
  -- request through Lua instead of reusing one prebuilt request (healthz).
  if spec.target then
    function request()
      local start = pos
      if start > #blob then
        -- Out of lines: go round again; these resends are expected to fail
        -- (404/409 etc.) and show up in the status counts.
        start = 1
        exhausted = exhausted + 1
      end
      if exhausted > 0 then reused = reused + 1 end
      local stop = blob:find("\n", start, true) or #blob + 1
      local path, body = spec.target(blob:sub(start, stop - 1))
      local n = seq + 1
      if probe then probe = false else pos, seq = stop + 1, n end
      if post then headers["Idempotency-Key"] = key_prefix .. n end
      return wrk.format(spec.method, base .. path, headers, body)
    end
  end

  function response(status)
    local k = status_key[status]
    if not k then
      k = "status_" .. status
      status_key[status] = k
    end
    _G[k] = (_G[k] or 0) + 1
  end
end

-- The operations of scripts/bench, by BENCH_OP (op.lua runs the one named).
local function json_line(path) return function(line) return path, line end end
M.ops = {
  healthz = { method = "GET", path = "/healthz", public = true },
  -- One JSON body per line.
  register = { method = "POST", target = json_line("/v1/prescriptions") },
  check = { method = "POST", target = json_line("/v1/checks") },
  qualify = { method = "POST", target = json_line("/v1/qualifications/card") },
  receive = { method = "POST", target = json_line("/v1/prescriptions/receive") },
  -- One qualification id per line.
  card = { method = "GET", target = function(line)
    local id = line:match("^%s*(%S+)%s*$")
    return id and "/v1/qualifications/" .. id .. "/prescriptions"
  end },
  -- "<prescription_id>\t<json body>" per line.
  dispense = { method = "POST", target = function(line)
    local id, body = line:match("^%s*([^\t]-)%s*\t(.+)$")
    if id and id ~= "" then return "/v1/prescriptions/" .. id .. "/dispense", body end
  end },
}

function M.run_op(name)
  local spec = M.ops[name or ""]
  if not spec then fatal("BENCH_OP must name an operation of common.lua's M.ops, got " .. tostring(name)) end
  spec.op = name
  M.run(spec)
end

return M
