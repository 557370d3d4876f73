#!/usr/bin/env bash
# Sustained relay load with failures: a fixed rate of messages for a fixed
# time through every role of mailflow (embedded log, release build), to three
# next hops: one that accepts (smtp-sink), one that answers 4xx to RCPT (so
# every copy to it is deferred, retried and finally expires with an NDR
# 4.4.7) and one that answers 5xx to RCPT (an NDR at once). The NDRs go back
# into the pipeline and land in the sender's mailbox (Maildir). Samples
# mailflow's resident set (all, and anonymous), the allocator's bytes in use
# and kept free (mailflow_malloc_bytes), queue depth and the sink's count
# every 5 s, so one can see whether memory stays flat while the deferral and
# NDR paths run.
#
# Usage: benches/load/sustained-bench.sh [SECONDS] [RATE]   (default 150 s at 100 msgs/s; run as root)
# Env:   SESSIONS (8), SHARE_SOFT (10), SHARE_HARD (10): percent of copies to the 4xx and 5xx hops,
#        TRACE_RETENTION (90d): [trace] retention, pruned every TRACE_CHECKPOINT (60s)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DURATION=${1:-150}
RATE=${2:-100}
SESSIONS=${SESSIONS:-8}
SHARE_SOFT=${SHARE_SOFT:-10}
SHARE_HARD=${SHARE_HARD:-10}
MF_PORT=2527
ADMIN_PORT=2528
OK_PORT=2531
SOFT_PORT=2532
HARD_PORT=2533
EXPIRATION=${EXPIRATION:-60}
TRACE_RETENTION=${TRACE_RETENTION:-90d}
TRACE_CHECKPOINT=${TRACE_CHECKPOINT:-60s}
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}

cargo build --release -q -p mailflow-actors --bin mailflow
WORK=$(mktemp -d)
trap 'kill ${MF_PID:-} ${OK_PID:-} ${SOFT_PID:-} ${HARD_PID:-} ${DNS_PID:-} ${LOAD_PID:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT

. "$ROOT/benches/load/lib.sh"
# sink_count_file (smtp-sink -c counter).
. "$BENCH_DIR/lib.sh"
start_dns 'bench.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"'

smtp-sink -c -u nobody 127.0.0.1:$OK_PORT 1024 > "$WORK/ok.count" 2>/dev/null &
OK_PID=$!
smtp-sink -u nobody -r RCPT 127.0.0.1:$SOFT_PORT 1024 > /dev/null 2>&1 &
SOFT_PID=$!
smtp-sink -u nobody -f RCPT 127.0.0.1:$HARD_PORT 1024 > /dev/null 2>&1 &
HARD_PID=$!
sleep 0.5

start_mailflow "$MF_PORT" connection,verdict,routing,delivery,journal <<TOML
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[trace]
retention = "$TRACE_RETENTION"
checkpoint_interval = "$TRACE_CHECKPOINT"
[transport]
retry_schedule = ["10s"]
message_expiration = "${EXPIRATION}s"
[[accepted_domains]]
name = "bench.test"
default = true
[[directory.recipients]]
address = "sender@bench.test"
[[inbound_connectors]]
name = "onprem"
kind = "on_premises"
sender_ip_addresses = ["127.0.0.1"]
[[outbound_connectors]]
name = "ok"
kind = "partner"
recipient_domains = ["ok.test"]
smart_hosts = ["127.0.0.1:$OK_PORT"]
[[outbound_connectors]]
name = "soft"
kind = "partner"
recipient_domains = ["soft.test"]
smart_hosts = ["127.0.0.1:$SOFT_PORT"]
[[outbound_connectors]]
name = "hard"
kind = "partner"
recipient_domains = ["hard.test"]
smart_hosts = ["127.0.0.1:$HARD_PORT"]
TOML

# The load: SESSIONS clients, each paced to RATE / SESSIONS messages per
# second, 50 messages per session; recipient domain by message number.
cat > "$WORK/load.py" <<PY
import json, smtplib, sys, threading, time
rate, duration, sessions = $RATE, $DURATION, $SESSIONS
soft, hard = $SHARE_SOFT, $SHARE_HARD
body = ("x" * 76 + "\r\n") * 25
counts = {"sent": 0, "accepted": 0, "refused": 0, "errors": 0, "ok": 0, "soft": 0, "hard": 0}
lock = threading.Lock()
start = time.time()
def client(t):
    n = t
    interval = sessions / rate
    due = start + t * interval / sessions
    while time.time() < start + duration:
        try:
            s = smtplib.SMTP("127.0.0.1", $MF_PORT, timeout=60)
            s.ehlo("onprem.bench.test")
            for _ in range(50):
                now = time.time()
                if now >= start + duration:
                    break
                if due > now:
                    time.sleep(due - now)
                due += interval
                share = n % 100
                kind = "soft" if share < soft else "hard" if share < soft + hard else "ok"
                rcpt = "user%d@%s.test" % (n, kind)
                msg = "From: sender@bench.test\r\nTo: %s\r\nSubject: sustained %d\r\n\r\n%s" % (rcpt, n, body)
                code, _ = s.mail("sender@bench.test")
                if code == 250:
                    code, _ = s.rcpt(rcpt)
                if code == 250:
                    code, _ = s.data(msg.encode())
                with lock:
                    counts["sent"] += 1
                    if code == 250:
                        counts["accepted"] += 1
                        counts[kind] += 1
                    else:
                        counts["refused"] += 1
                        s.rset()
                n += sessions
            s.quit()
        except (OSError, smtplib.SMTPException):
            with lock: counts["errors"] += 1
            time.sleep(0.2)
threads = [threading.Thread(target=client, args=(t,)) for t in range(sessions)]
for th in threads: th.start()
for th in threads: th.join()
counts["seconds"] = round(time.time() - start, 1)
print(json.dumps(counts))
PY

sample() { # elapsed
  local rss anon metrics depth traced in_use free ok
  rss=$(awk '/^VmRSS/ {print $2}' /proc/$MF_PID/status)
  anon=$(awk '/^RssAnon/ {print $2}' /proc/$MF_PID/status)
  metrics=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics")
  depth=$(awk '/^mailflow_queue_depth\{/ {s += $NF} END {print s + 0}' <<< "$metrics")
  traced=$(awk '/^mailflow_trace_messages / {print $NF}' <<< "$metrics")
  in_use=$(awk '/^mailflow_malloc_bytes\{state="in_use"\}/ {print int($NF / 1024)}' <<< "$metrics")
  free=$(awk '/^mailflow_malloc_bytes\{state="free"\}/ {print int($NF / 1024)}' <<< "$metrics")
  ok=$(sink_count_file "$WORK/ok.count")
  printf 'sample\t%s\trss_kib=%s\tanon_kib=%s\tmalloc_in_use_kib=%s\tmalloc_free_kib=%s\tqueue_depth=%s\ttrace_messages=%s\tdelivered_ok=%s\tndrs=%s\n' \
    "$1" "$rss" "$anon" "${in_use:-?}" "${free:-?}" "$depth" "${traced:-?}" "$ok" \
    "$(ls "$WORK/mf/mail/sender@bench.test/new" 2>/dev/null | wc -l)"
}

printf 'sustained\tduration=%ss\trate=%s/s\tsessions=%s\tsoft=%s%%\thard=%s%%\texpiration=%ss\ttrace_retention=%s\n' \
  "$DURATION" "$RATE" "$SESSIONS" "$SHARE_SOFT" "$SHARE_HARD" "$EXPIRATION" "$TRACE_RETENTION"
python3 "$WORK/load.py" > "$WORK/load.json" &
LOAD_PID=$!
begin=$(date +%s)
# Sample during the load and for the expiry of the last deferred copies.
while :; do
  sleep 5
  elapsed=$(( $(date +%s) - begin ))
  sample "$elapsed"
  if ! kill -0 $LOAD_PID 2>/dev/null && (( elapsed > DURATION + EXPIRATION + 20 )); then break; fi
done
wait $LOAD_PID || true
printf 'load\t%s\n' "$(cat "$WORK/load.json")"
printf 'mailflow_cpu_s\t%s\n' "$(awk '{print ($14 + $15) / 100}' /proc/$MF_PID/stat)"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^mailflow_delivery_outcomes_total|^mailflow_smtp_messages_accepted_total' \
  | sed 's/^/metric\t/'
