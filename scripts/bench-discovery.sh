#!/usr/bin/env bash
# Service discovery's DNS (issue 22): name lookup latency and throughput of the node's DNS
# server on loopback, one client asking one query at a time (UDP):
#   cluster name     `api` answered from the snapshot of names (its VIP)
#   forwarded name   `example.com`, forwarded to a fake upstream on loopback (the floor of
#                    what forwarding costs: a real upstream adds its own time)
#   resolve() alone  the pure decision, no sockets
# It runs the ignored test dns::server::tests::bench_lookups in the test build (the dev
# profile: Shoal's own code unoptimised, dependencies opt-level 1 — an upper bound; the
# LTO release profile is too slow to build on the shared machine). What it does not measure yet: the request throughput by name (through a VIP)
# against a container directly — the VIP proxy is not built (ARCHITECTURE.md, "Service
# discovery").
#
#   scripts/bench-discovery.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> nice -n 19 cargo nextest run -p shoal --run-ignored only bench_lookups" >&2
nice -n 19 cargo nextest run -p shoal --run-ignored only bench_lookups --no-capture 2>&1 |
    grep -E '^(cluster name|forwarded name|resolve\(\) alone)'
