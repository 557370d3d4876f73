# Shared by the load harness scripts; source it after setting ROOT and WORK.

# start_dns ZONE_LINE...: a real DNS server on a free loopback port (dnslib),
# authoritative for the given zone lines (NXDOMAIN for the rest), so the
# verdict's SPF and DMARC lookups are real but fast, as with a warm resolver.
# Sets DNS_PORT and DNS_PID.
start_dns() {
  DNS_PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf '%s\n' "$@" > "$WORK/zone"
  python3 -m dnslib.zoneresolver --address 127.0.0.1 --port "$DNS_PORT" --zone "$WORK/zone" \
    --log=-request,-reply,-truncated,-error > /dev/null 2>&1 &
  DNS_PID=$!
  sleep 1
}

# start_mailflow PORT ROLES: starts the release binary on 127.0.0.1:PORT with
# an embedded log under $WORK/mf, the bench's [server] settings and the extra
# configuration read from stdin (routing, delivery, DNS...), runs ROLES, waits
# until it is ready, and sets MF_PID. MF_EXEC (none) is put before the
# binary: a command that execs it, so that MF_PID stays the router's pid, such
# as `env LD_PRELOAD=… DUMP_HEAPTRACK_OUTPUT=…` for a heap profile or `taskset -c 1`.
# MF_BIN (target/release/mailflow) is the binary: a copy keeps a long run on
# one build while the tree is rebuilt. SEGMENT_BYTES (256 MiB): the log's
# segment_bytes.
start_mailflow() {
  local port=$1 roles=$2
  rm -rf "$WORK/mf"; mkdir -p "$WORK/mf"
  {
    cat <<TOML
[server]
hostname = "mailflow.bench"
max_connections_per_ip = 1000
[[server.listeners]]
name = "smtp"
address = "127.0.0.1:$port"
[event_log]
kind = "embedded"
path = "$WORK/mf/log"
segment_bytes = ${SEGMENT_BYTES:-268435456}
[mailbox_store]
kind = "maildir"
path = "$WORK/mf/mail"
TOML
    cat
  } > "$WORK/mf/config.toml"
  RUST_LOG=warn ${MF_EXEC:-} "${MF_BIN:-$ROOT/target/release/mailflow}" serve --config "$WORK/mf/config.toml" --roles "$roles" \
    > "$WORK/mf/out" 2>&1 &
  MF_PID=$!
  for _ in $(seq 100); do grep -q '^ready' "$WORK/mf/out" 2>/dev/null && return; sleep 0.1; done
  echo "mailflow did not start" >&2; cat "$WORK/mf/out" >&2; exit 1
}

# sink_route PORT: configuration that makes bench.test an internal-relay
# accepted domain whose mail goes through an on-premises outbound connector
# to a smart host on 127.0.0.1:PORT, so every message runs every role.
sink_route() {
  cat <<TOML
[[accepted_domains]]
name = "bench.test"
type = "internal_relay"
[[outbound_connectors]]
name = "sink"
kind = "on_premises"
all_accepted_domains = true
smart_hosts = ["127.0.0.1:$1"]
TOML
}
