#!/usr/bin/env bash
# A large deferred queue, end to end (issue "Proof under stress": "a
# 1,000,000-message deferred queue: replay time, RSS, and delivery after
# recovery"), through the real release binary with every role and an
# embedded log:
#
# 1. fill: smtp-source sends COUNT messages (SIZE bytes, SESSIONS sessions) to
#    mailflow while its next hop (an outbound connector's smart host) is down,
#    so every message is accepted (250, durable) and deferred behind one
#    destination in retry;
# 2. kill -9, then start again on the same directory: the time until ready
#    (the delivery state replayed from the log, snapshot plus tail) and the
#    resident set then;
# 3. recovery: smtp-sink comes up on the next hop's port, an operator "retry
#    now" is posted for the destination, and the time until the sink has
#    received every message is measured, with the resident set sampled.
#
# Usage: benches/load/deferred-queue-bench.sh [COUNT]       (default 1000000)
# Env:   SIZE (1024), SESSIONS (20), CONNECTIONS (20): max_connections_per_destination
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
COUNT=${1:-1000000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-20}
CONNECTIONS=${CONNECTIONS:-20}
MF_PORT=2527
ADMIN_PORT=2528
SINK_PORT=2526
TOKEN=bench-token
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}

cargo build --release -q -p mailflow-actors --bin mailflow
WORK=$(mktemp -d)
trap 'kill -9 ${MF_PID:-} 2>/dev/null; kill ${SINK_PID:-} ${DNS_PID:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT

. "$ROOT/benches/load/lib.sh"
# sink_count_file (smtp-sink -c counter).
. "$BENCH_DIR/lib.sh"
start_dns 'source.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"'

config() {
  cat <<TOML
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
token = "$TOKEN"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[transport]
retry_schedule = ["1h"]
message_expiration = "2d"
max_connections_per_destination = $CONNECTIONS
TOML
  sink_route "$SINK_PORT"
}
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$MF_PID/status"; }
depth() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^mailflow_queue_depth\{/ {s += $NF} END {print s + 0}'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

printf 'deferred-queue\tcount=%s\tsize=%s\tsessions=%s\tconnections=%s\tcommit=%s\n' \
  "$COUNT" "$SIZE" "$SESSIONS" "$CONNECTIONS" "$(git rev-parse --short HEAD)"

# 1. Fill while the next hop is down.
start_mailflow "$MF_PORT" connection,verdict,routing,delivery,journal < <(config)
start=$(now)
smtp-source -s "$SESSIONS" -l "$SIZE" -m "$COUNT" -N -f src@source.test -t rcpt@bench.test -M source.test \
  "127.0.0.1:$MF_PORT" > "$WORK/source.out" 2>&1
accept_s=$(elapsed "$start")
# Every accepted message is in the queue once routing has run.
for _ in $(seq 600); do (( $(depth) >= COUNT )) && break; sleep 1; done
queued=$(depth)
printf 'fill\taccepted_in_s=%s\taccept_per_s=%.0f\tqueued=%s\trss_mib=%s\tlog_mib=%s\n' "$accept_s" \
  "$(awk -v n="$COUNT" -v s="$accept_s" 'BEGIN {print n / s}')" "$queued" "$(rss_mib)" \
  "$(du -sm "$WORK/mf/log" | cut -f1)"

# 2. kill -9 and start again on the same directory.
kill -9 "$MF_PID"; wait "$MF_PID" 2>/dev/null || true
start=$(now)
RUST_LOG=warn "$ROOT/target/release/mailflow" serve --config "$WORK/mf/config.toml" \
  --roles connection,verdict,routing,delivery,journal >> "$WORK/mf/out" 2>&1 &
MF_PID=$!
for _ in $(seq 6000); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz") == 200 ]] && break
  sleep 0.05
done
ready_s=$(elapsed "$start")
printf 'restart\tready_in_s=%s\tqueued=%s\trss_mib=%s\n' "$ready_s" "$(depth)" "$(rss_mib)"

# 3. The next hop comes back; an operator says "retry now".
smtp-sink -c -u nobody -m 1024 "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.count" 2> "$WORK/sink.err" &
SINK_PID=$!
sleep 0.5
key=$(curl -s "http://127.0.0.1:$ADMIN_PORT/api/v1/queues" | python3 -c '
import json, sys, urllib.parse
body = json.load(sys.stdin)
queues = body["queues"] if isinstance(body, dict) else body
print(urllib.parse.quote(max(queues, key=lambda q: q["depth"])["key"], safe=""))')
start=$(now)
curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{}' \
  "http://127.0.0.1:$ADMIN_PORT/api/v1/queues/$key/retry" > "$WORK/retry.out"
peak=0
while :; do
  sleep 5
  n=$(sink_count_file "$WORK/sink.count")
  rss=$(rss_mib); (( rss > peak )) && peak=$rss
  printf 'sample\t%s\tdelivered=%s\trss_mib=%s\tqueued=%s\n' "$(elapsed "$start")" "$n" "$rss" "$(depth)"
  (( n >= COUNT )) && break
  kill -0 "$MF_PID" || { echo "mailflow died" >&2; tail "$WORK/mf/out" >&2; exit 1; }
done
drain_s=$(elapsed "$start")
printf 'recovery\tdelivered=%s\tin_s=%s\tper_s=%.0f\tpeak_rss_mib=%s\tmailflow_cpu_s=%s\n' "$n" "$drain_s" \
  "$(awk -v n="$COUNT" -v s="$drain_s" 'BEGIN {print n / s}')" "$peak" \
  "$(awk '{print ($14 + $15) / 100}' "/proc/$MF_PID/stat")"
