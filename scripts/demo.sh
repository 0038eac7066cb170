#!/usr/bin/env bash
# Starts a local Shoal daemon in a temp dir, makes it a cluster of one, and shows it.
# Ctrl-C stops the daemon and removes the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin shoal
SHOAL="$PWD/target/debug/shoal"
DIR=$(mktemp -d /tmp/shoal-demo.XXXXXX)
SOCK="$DIR/shoal.sock"
export SHOAL_HOST="unix://$SOCK"

cleanup() {
    [[ -n "${PID:-}" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$SHOAL" daemon --state-dir "$DIR/state" --socket "$SOCK" \
    --listen-addr 127.0.0.1:4747 --hostname demo-1 2>"$DIR/daemon.log" &
PID=$!
for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.1; done

echo "\$ shoal info"
"$SHOAL" info
echo
echo "\$ shoal init"
"$SHOAL" init
echo
echo "\$ shoal node ls"
"$SHOAL" node ls
echo
echo "Daemon log: $DIR/daemon.log. Try: SHOAL_HOST=$SHOAL_HOST $SHOAL info"
echo "Press Ctrl-C to stop."
wait "$PID"
