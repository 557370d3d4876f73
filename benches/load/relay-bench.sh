#!/usr/bin/env bash
# End-to-end relay throughput: accept → verdict → route → deliver to smtp-sink,
# mailflow (embedded log, release build) against the private Postfix peer of
# ../shared/bench, in the same run, with the same driver (smtp-source), the same
# sink (smtp-sink on 127.0.0.1:2526) and the same measurement (relay-bench.sh).
#
# Usage: benches/load/relay-bench.sh [COUNT]      (run as root; Postfix needs it)
# Env:   SIZES ("1024 102400"), CONCS ("1 20"), REPS (2), BENCH_DIR (../shared/bench),
#        MF_CONNECTIONS (1): mailflow's max_connections_per_destination,
#        PERF_DATA (none): a path prefix; when set, each mailflow cell is profiled
#        with `perf record -F 499 -g` into PERF_DATA.SIZE.CONC.REP
#
# mailflow's route: bench.test is an internal-relay accepted domain; its
# recipients go through an on-premises outbound connector whose smart host is
# the sink, so every message runs every role. The verdict's SPF and DMARC
# lookups go to a real DNS server on loopback (dnslib) serving the sender's
# SPF record, as they would to a warm resolver.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
COUNT=${1:-2000}
SIZES=${SIZES:-"1024 102400"}
CONCS=${CONCS:-"1 20"}
REPS=${REPS:-2}
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
MF_PORT=2527
MF_CONNECTIONS=${MF_CONNECTIONS:-1}

cargo build --release -q -p mailflow-actors --bin mailflow
WORK=$(mktemp -d)
trap 'kill ${MF_PID:-} ${DNS_PID:-} 2>/dev/null || true; "$BENCH_DIR/postfix-peer.sh" stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

. "$ROOT/benches/load/lib.sh"
start_dns 'source.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"'
# cg_create and friends (CPU accounting per relay).
. "$BENCH_DIR/lib.sh"
start_relaying() {
  start_mailflow "$MF_PORT" connection,verdict,routing,delivery < <(
    printf '[dns]\nnameservers = ["127.0.0.1:%s"]\n[transport]\nmax_connections_per_destination = %s\n' \
      "$DNS_PORT" "$MF_CONNECTIONS"
    sink_route 2526
  )
}

printf 'server\tsize\tconc\trep\tresult\n'
for rep in $(seq "$REPS"); do
  for size in $SIZES; do
    for conc in $CONCS; do
      start_relaying
      # Its own CPU-accounting cgroup, as Postfix has, so both report relay_cpu_s.
      MF_CG=$(cg_create relaybench-mailflow)
      echo "$MF_PID" > "$MF_CG/cgroup.procs"
      PERF_PID=
      if [[ -n ${PERF_DATA:-} ]]; then
        perf record -F 499 -g -o "$PERF_DATA.$size.$conc.$rep" -p "$MF_PID" > /dev/null 2>&1 &
        PERF_PID=$!
      fi
      line=$(RELAY_CGROUP=$MF_CG TIMEOUT=300 "$BENCH_DIR/relay-bench.sh" 127.0.0.1:$MF_PORT 2526 "$COUNT" "$size" "$conc" 2>/dev/null || true)
      if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; fi
      kill $MF_PID; wait $MF_PID 2>/dev/null || true
      rmdir "$MF_CG" 2>/dev/null || true
      printf 'mailflow-c%s\t%s\t%s\t%s\t%s\n' "$MF_CONNECTIONS" "$size" "$conc" "$rep" "$line"

      "$BENCH_DIR/postfix-peer.sh" start >/dev/null
      PF_CG=$("$BENCH_DIR/postfix-peer.sh" cgroup)
      line=$(RELAY_CGROUP=$PF_CG TIMEOUT=300 "$BENCH_DIR/relay-bench.sh" 127.0.0.1:2525 2526 "$COUNT" "$size" "$conc" 2>/dev/null || true)
      "$BENCH_DIR/postfix-peer.sh" stop >/dev/null; "$BENCH_DIR/postfix-peer.sh" purge >/dev/null 2>&1 || true
      printf 'postfix\t%s\t%s\t%s\t%s\n' "$size" "$conc" "$rep" "$line"
    done
  done
done
