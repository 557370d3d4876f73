# Shared by the load harness scripts; source it after setting ROOT and WORK.

# start_mailflow PORT ROLES: starts the release binary on 127.0.0.1:PORT with
# an embedded log under $WORK/mf, the bench's [server] settings and the extra
# configuration read from stdin (routing, delivery, DNS...), runs ROLES, waits
# until it is ready, and sets MF_PID.
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
[mailbox_store]
kind = "maildir"
path = "$WORK/mf/mail"
TOML
    cat
  } > "$WORK/mf/config.toml"
  RUST_LOG=warn "$ROOT/target/release/mailflow" serve --config "$WORK/mf/config.toml" --roles "$roles" \
    > "$WORK/mf/out" 2>&1 &
  MF_PID=$!
  for _ in $(seq 100); do grep -q '^ready' "$WORK/mf/out" 2>/dev/null && return; sleep 0.1; done
  echo "mailflow did not start" >&2; cat "$WORK/mf/out" >&2; exit 1
}
