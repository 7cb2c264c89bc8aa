-- wrk script for bench-entitlements: one customer's entitlement check per request (GET), or, with $BATCH set, the
-- batch form a gateway uses (POST /v1/entitlements/check with $BATCH checks); customers drawn uniformly from
-- $CUSTOMERS ("cust-00000" .. ), paced: each connection waits $DELAY_MS between its requests.
function init(args)
  customers = tonumber(os.getenv("CUSTOMERS"))
  feature = os.getenv("FEATURE")
  pause = tonumber(os.getenv("DELAY_MS"))
  batch = tonumber(os.getenv("BATCH") or "0")
  headers = { ["Authorization"] = "Bearer " .. os.getenv("METER_KEY"), ["Content-Type"] = "application/json" }
  math.randomseed(os.time() + (id or 0))
end

function delay()
  return pause
end

function customer()
  return string.format("cust-%05d", math.random(0, customers - 1))
end

function request()
  if batch > 0 then
    local checks = {}
    for i = 1, batch do
      checks[i] = string.format('{"customer":"%s","feature":"%s"}', customer(), feature)
    end
    return wrk.format("POST", "/v1/entitlements/check", headers, '{"checks":[' .. table.concat(checks, ",") .. ']}')
  end
  return wrk.format("GET", string.format("/v1/customers/%s/entitlements/%s", customer(), feature), headers)
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
