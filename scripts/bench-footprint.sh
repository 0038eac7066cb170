#!/usr/bin/env bash
# Idle footprint: a release build, a manager and a worker on loopback, 20 s after the
# worker joined; prints each daemon's resident memory, the CPU time each used during those
# 20 idle seconds (user + system, from /proc/PID/stat), and the binary's size.
# Both run with --no-discovery (two daemons on one machine would share one network; the
# figures in BENCHMARKS.md were taken before discovery existed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin shoal
B="$PWD/target/release/shoal"
D=$(mktemp -d /tmp/shoal-footprint.XXXXXX)
cleanup() { kill "${PM:-}" "${PW:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
"$B" daemon --no-discovery --state-dir "$D/m" --socket "$D/m.sock" --listen-addr 127.0.44.1:4747 --hostname fm 2>/dev/null & PM=$!
"$B" daemon --no-discovery --state-dir "$D/w" --socket "$D/w.sock" --listen-addr 127.0.44.2:4747 --hostname fw 2>/dev/null & PW=$!
for s in m w; do for _ in $(seq 100); do [[ -S "$D/$s.sock" ]] && break; sleep 0.1; done; done
"$B" -H "unix://$D/m.sock" init >/dev/null
"$B" -H "unix://$D/w.sock" join --token "$("$B" -H "unix://$D/m.sock" join-token -q worker)" >/dev/null
# utime + stime of a process, in milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"; }
m0=$(cpu_ms "$PM"); w0=$(cpu_ms "$PW")
sleep 20   # idle on purpose: this measures the idle footprint
echo "binary: $(stat -c %s "$B") bytes"
echo "manager: $(awk '/VmRSS/ {print $2, $3}' /proc/$PM/status) RSS"
echo "worker:  $(awk '/VmRSS/ {print $2, $3}' /proc/$PW/status) RSS"
echo "manager: $(($(cpu_ms "$PM") - m0)) ms CPU in 20 s idle"
echo "worker:  $(($(cpu_ms "$PW") - w0)) ms CPU in 20 s idle"
