-- wrk script for bench-entitlements: GET one customer's entitlement check per request, customers drawn uniformly
-- from $CUSTOMERS ("cust-00000" .. ), paced: each connection waits $DELAY_MS between its requests.
function init(args)
  customers = tonumber(os.getenv("CUSTOMERS"))
  feature = os.getenv("FEATURE")
  pause = tonumber(os.getenv("DELAY_MS"))
  headers = { ["Authorization"] = "Bearer " .. os.getenv("METER_KEY") }
  math.randomseed(os.time() + (id or 0))
end

function delay()
  return pause
end

function request()
  local path = string.format("/v1/customers/cust-%05d/entitlements/%s", math.random(0, customers - 1), feature)
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end

function done(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors_non2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
