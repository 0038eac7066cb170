#!/usr/bin/env bash
# Hostile peers (issue 14): how much memory can peers WITHOUT any certificate make a manager
# hold? Starts one daemon (a cluster of one, `init`), records its RSS, runs the attacker
# (node/examples/hostile_peers.rs: 50 QUIC connections without a client certificate, each
# opening every stream the node grants, announcing 1 MiB JOIN frames and sending 64 KiB of
# them, writing on uni streams, sending datagrams, then stalling for 10 s), samples the
# daemon's RSS every 200 ms, and prints one line of figures.
#
#   scripts/bench-hostile-peers.sh                                  # the current tree
#   SHOAL_BIN=/path/to/old/shoal scripts/bench-hostile-peers.sh     # another daemon
#
# Debug builds (the daemon and the attacker) unless SHOAL_BIN points elsewhere. The attacker
# is always built from the current tree. Knobs (environment): CONNECTIONS (50), ATTACK_IPS
# (1: all from 127.0.0.1; N: spread over 127.0.0.101...), BODY_BYTES (65536), ANNOUNCE
# (1048576), DATAGRAMS (1000 per connection), HOLD_SECS (10), ADDR (127.0.77.1:4747).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
if [[ -n "${SHOAL_BIN:-}" ]]; then
    cargo build --quiet -p shoal --example hostile_peers
    B=$SHOAL_BIN
else
    cargo build --quiet -p shoal --bin shoal --example hostile_peers
    B=$TARGET_DIR/debug/shoal
fi
ATTACKER=$TARGET_DIR/debug/examples/hostile_peers
ADDR=${ADDR:-127.0.77.1:4747}

D=$(mktemp -d /tmp/shoal-hostile.XXXXXX)
PM=""
SAMPLER=""
cleanup() {
    [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true
    [[ -n "$PM" ]] && kill "$PM" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

"$B" daemon --no-discovery --state-dir "$D/m" --socket "$D/m.sock" --listen-addr "$ADDR" \
    --hostname hostile-target 2>"$D/daemon.log" &
PM=$!
for _ in $(seq 100); do [[ -S "$D/m.sock" ]] && break; sleep 0.1; done
[[ -S "$D/m.sock" ]] || { echo "the daemon did not start:"; cat "$D/daemon.log"; exit 1; }
"$B" -H "unix://$D/m.sock" init >/dev/null
sleep 2   # let the cluster of one settle (leader, first snapshot of the state)
rss_before=$(rss_kb "$PM")

( while kill -0 "$PM" 2>/dev/null; do rss_kb "$PM"; sleep 0.2; done ) >"$D/rss.log" &
SAMPLER=$!

attack=$("$ATTACKER" --addr "$ADDR" --connections "${CONNECTIONS:-50}" \
    --ips "${ATTACK_IPS:-1}" --announce "${ANNOUNCE:-1048576}" \
    --body-bytes "${BODY_BYTES:-65536}" --datagrams "${DATAGRAMS:-1000}" \
    --hold-secs "${HOLD_SECS:-10}")

kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
rss_peak=$(sort -n "$D/rss.log" | tail -1)
sleep 3   # the attacker closed everything; give the daemon time to drop it
if kill -0 "$PM" 2>/dev/null; then
    alive=yes
    rss_after=$(rss_kb "$PM")
else
    alive=no
    rss_after=0
fi
refusal_log_lines=$(grep -c "refusing a connection" "$D/daemon.log" || true)

echo "daemon: $B"
echo "rss_before_kb=$rss_before rss_peak_kb=${rss_peak:-0} rss_after_kb=$rss_after daemon_alive=$alive refusal_log_lines=$refusal_log_lines"
echo "$attack"
