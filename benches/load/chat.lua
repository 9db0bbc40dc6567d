-- wrk script for benches/load.sh: POST one fixed chat-completion request body.
--
-- Usage: wrk [options] -s chat.lua URL -- BODY_FILE
--
-- The body is read from a file (written by load.sh) so that the curl smoke test and
-- wrk send byte-for-byte the same request.

function init(args)
  local path = args[1]
  if path == nil then
    error("chat.lua: pass the request body file after --")
  end
  local f = assert(io.open(path, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer sk-client"
end

-- One machine-readable line for load.sh. summary.errors.status counts responses with a
-- status above 399; the other fields are socket errors.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "LOADBENCH requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, e.status, e.connect, e.read, e.write, e.timeout))
end
