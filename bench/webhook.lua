-- wrk script: POST unique Flowroute JSON:API inbound SMS webhooks (the gateway dedupes by
-- data.id, so every request carries a new id: run nonce + thread number + counter).
--   BENCH_RUN=abc wrk -t1 -c64 -d10s -s bench/webhook.lua http://127.0.0.1:PORT/flowrouteinbound
-- done() prints one line "BENCH_JSON {...}" (latencies in microseconds) for python -m bench.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local template = '{"data":{"type":"message","id":"%s","attributes":{'
  .. '"amount_display":"$0.0070","amount_nanodollars":7000000,'
  .. '"body":"Benchmark message %d","delivery_receipts":[],"direction":"inbound",'
  .. '"from":"12065550142","is_mms":false,"message_encoding":0,"message_type":"longcode",'
  .. '"status":"delivered","timestamp":"%s","to":"12025551234"}}}'

function init(args)
  run = os.getenv("BENCH_RUN") or tostring(os.time())
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local id = string.format("mdr2-%s-%d-%d", run, tid, counter)
  local stamp = os.date("!%Y-%m-%dT%H:%M:%S.00Z")
  return wrk.format(nil, nil, nil, string.format(template, id, counter, stamp))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect":%d,'
      .. '"read":%d,"write":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
