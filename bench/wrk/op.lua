-- wrk script for every benchmark operation: BENCH_OP names it (M.ops in common.lua).
-- Finds common.lua via BENCH_WRK_DIR (else this file's own directory, which LuaJIT reports as
-- "@path"), and exits on failure because wrk would otherwise print the error and silently
-- benchmark GET / instead.
local dir = os.getenv("BENCH_WRK_DIR") or debug.getinfo(1, "S").source:match("^@(.*)/") or "."
package.path = dir .. "/?.lua;" .. package.path
local ok, common = pcall(require, "common")
if not ok then io.stderr:write("bench/wrk: ", tostring(common), "\n") os.exit(2) end
common.run_op(os.getenv("BENCH_OP"))
