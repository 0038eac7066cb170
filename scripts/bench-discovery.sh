#!/usr/bin/env bash
# Service discovery's DNS (issue 22): name lookup latency and throughput of the node's DNS
# server on loopback, one client asking one query at a time (UDP):
#   cluster name     `api` answered from the snapshot of names (its VIP)
#   forwarded name   `example.com`, forwarded to a fake upstream on loopback (the floor of
#                    what forwarding costs: a real upstream adds its own time)
#   resolve() alone  the pure decision, no sockets
# It runs the ignored test dns::server::tests::bench_lookups in the test build (the dev
# profile: Shoal's own code unoptimised, dependencies opt-level 1 — an upper bound; the
# LTO release profile is too slow to build on the shared machine).
# Then request throughput through the VIP proxy (Docker and the test image needed: a
# one-manager, one-worker cluster with --discovery): a client container's requests to one
# httpd task directly at its address, by name with the task on the client's node, and by
# name from the other node (QUIC), each 300 sequential HTTP/1.0 requests (one connection and,
# by name, one lookup each) timed around one `docker exec` — the ignored test
# bench_requests_by_name_vs_direct in tests/tests/discovery.rs (debug build too).
#
#   scripts/bench-discovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> nice -n 19 cargo nextest run -p shoal --run-ignored only bench_lookups" >&2
nice -n 19 cargo nextest run -p shoal --run-ignored only bench_lookups --no-capture 2>&1 |
    grep -E '^(cluster name|forwarded name|resolve\(\) alone)'
echo "==> nice -n 19 cargo nextest run -p shoal-tests --test discovery --run-ignored only" >&2
cargo build -q -p shoal
nice -n 19 cargo nextest run -p shoal-tests --test discovery --run-ignored only --no-capture 2>&1 |
    grep -E 'requests/s'
