#!/usr/bin/env bash
# Durable accept throughput: mailflow (embedded log, release build) against the
# private Postfix peer of ../shared/bench, in the same run, driven by smtp-source
# (throughput) and smtp-latency (end-of-data → 250 latency).
#
# Usage: benches/load/accept-bench.sh [COUNT]      (run as root; Postfix needs it)
# Env:   SIZES ("1024 102400"), CONCS ("1 20"), REPS (2), BENCH_DIR (../shared/bench)
#
# Both servers fsync before 250 (Postfix: cleanup fsyncs the queue file;
# mailflow: the embedded log fdatasyncs content and event). mailflow runs its
# accepting roles only (end to end is relay-bench.sh), so Postfix is measured twice: delivering to a sink as it
# normally does, and with `defer_transports = smtp` (accept and queue only,
# the like-for-like case).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
COUNT=${1:-2000}
SIZES=${SIZES:-"1024 102400"}
CONCS=${CONCS:-"1 20"}
REPS=${REPS:-2}
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
SINK_PORT=2526
MF_PORT=2527

cargo build --release -q -p mailflow-actors --bin mailflow
cargo build --release -q -p mailflow-benches --bin smtp-latency
WORK=$(mktemp -d)
trap 'kill ${MF_PID:-} ${SINK_PID:-} 2>/dev/null || true; "$BENCH_DIR/postfix-peer.sh" stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

# Acceptance only: the roles that run before the 250 and the verdict, as when
# these numbers were first taken; routing and delivery are measured by relay-bench.sh.
. "$ROOT/benches/load/lib.sh"
start_accepting() {
  start_mailflow "$MF_PORT" connection,verdict <<TOML
[[accepted_domains]]
name = "bench.test"
type = "internal_relay"
TOML
}

start_sink() {
  smtp-sink -c -u nobody 127.0.0.1:$SINK_PORT 1024 > /dev/null 2>&1 &
  SINK_PID=$!
  sleep 0.3
}

# One throughput measurement: prints msgs/s for COUNT messages, new connection per message.
throughput() { # address size conc
  local start end
  start=$(date +%s.%N)
  smtp-source -s "$3" -m "$COUNT" -l "$2" -N -f src@source.test -t rcpt@bench.test -M source.test "$1" >/dev/null
  end=$(date +%s.%N)
  echo "scale=1; $COUNT / ($end - $start)" | bc
}

latency() { # address size conc
  "$ROOT/target/release/smtp-latency" "$1" "$3" $(( COUNT / $3 > 0 ? COUNT / $3 : 1 )) "$2"
}

printf 'server\tsize\tconc\trep\taccept_msgs_per_s\tlatency\n'
for rep in $(seq "$REPS"); do
  for size in $SIZES; do
    for conc in $CONCS; do
      # mailflow, fresh log each cell
      start_accepting
      tp=$(throughput 127.0.0.1:$MF_PORT "$size" "$conc")
      lat=$(latency 127.0.0.1:$MF_PORT "$size" "$conc")
      kill $MF_PID; wait $MF_PID 2>/dev/null || true
      printf 'mailflow\t%s\t%s\t%s\t%s\t%s\n' "$size" "$conc" "$rep" "$tp" "$lat"

      # Postfix delivering to a sink (its normal operation)
      start_sink
      PF_MAIN_EXTRA='' "$BENCH_DIR/postfix-peer.sh" start >/dev/null
      tp=$(throughput 127.0.0.1:2525 "$size" "$conc")
      lat=$(latency 127.0.0.1:2525 "$size" "$conc")
      "$BENCH_DIR/postfix-peer.sh" stop >/dev/null; "$BENCH_DIR/postfix-peer.sh" reset >/dev/null 2>&1 || true
      kill $SINK_PID; wait $SINK_PID 2>/dev/null || true
      printf 'postfix\t%s\t%s\t%s\t%s\t%s\n' "$size" "$conc" "$rep" "$tp" "$lat"

      # Postfix accepting and queueing only
      PF_MAIN_EXTRA='defer_transports = smtp' "$BENCH_DIR/postfix-peer.sh" start >/dev/null
      tp=$(throughput 127.0.0.1:2525 "$size" "$conc")
      lat=$(latency 127.0.0.1:2525 "$size" "$conc")
      "$BENCH_DIR/postfix-peer.sh" stop >/dev/null; "$BENCH_DIR/postfix-peer.sh" purge >/dev/null 2>&1 || true
      printf 'postfix-queue-only\t%s\t%s\t%s\t%s\t%s\n' "$size" "$conc" "$rep" "$tp" "$lat"
    done
  done
done
