-- wrk script for bench-http: each thread posts its share of pre-built bodies in order, for wrk's duration.
-- Bodies are read from the files listed in $BODIES_LIST; no per-event work happens while wrk runs.
-- bench_http.py makes enough bodies for the duration and reports how many were sent twice.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(os.getenv("WRK_THREADS"))
  bodies = {}
  local i = 0
  for path in io.lines(os.getenv("BODIES_LIST")) do
    if i % nthreads == id then
      local f = io.open(path, "rb")
      table.insert(bodies, f:read("*a"))
      f:close()
    end
    i = i + 1
  end
  next_body = 1
  sent = 0
  headers = {
    ["Authorization"] = "Bearer " .. os.getenv("METER_KEY"),
    ["Content-Type"] = "application/cloudevents-batch+json",
  }
end

-- $DELAY_MS (optional): each connection waits this long between its requests, to offer a rate below the maximum.
function delay()
  return tonumber(os.getenv("DELAY_MS") or "0")
end

function request()
  if next_body > #bodies then
    next_body = 1
  end
  local body = bodies[next_body]
  next_body = next_body + 1
  return wrk.format("POST", os.getenv("WRK_PATH"), headers, body)
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
  sent = sent + 1
end

function done(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors_non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
