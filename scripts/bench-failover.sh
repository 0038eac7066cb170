#!/usr/bin/env bash
# Leader failover, measured N times, with the median printed by this script (no figure
# aggregated by hand). Two measurements:
#   cluster    — real daemons: the leader of 3 `kill -9`ed → a write accepted again through a
#                follower (test three_managers_failover_and_quorum_loss, which prints
#                "leader killed -> write accepted after X ms")
#   in-process — three managers in one test process over real QUIC, the leader stopped
#                (test manager::tests::three_managers_replicate_fail_over_then_lose_quorum, which prints
#                "failover: leader stopped → write accepted by the new leader in X ms")
#
#   scripts/bench-failover.sh [RUNS]        # default 5
#
# Debug builds, as CI builds them. Each run is a separate test process.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}

cargo build --quiet -p shoal --bin shoal
export SHOAL_BIN=$PWD/target/debug/shoal

median() {
    sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "none"; exit }
        if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 }
    }'
}

summarize() {
    local name=$1 file=$2
    local values
    values=$(tr '\n' ' ' <"$file")
    printf '%s: runs=%s values_ms=[%s] median_ms=%s max_ms=%s\n' "$name" \
        "$(wc -l <"$file" | tr -d ' ')" "${values% }" "$(median <"$file")" \
        "$(sort -n "$file" | tail -1)"
}

cluster=$(mktemp)
inproc=$(mktemp)
trap 'rm -f "$cluster" "$inproc"' EXIT

for ((i = 1; i <= RUNS; i++)); do
    cargo nextest run --no-fail-fast -p shoal-tests --no-capture \
        three_managers_failover_and_quorum_loss 2>&1 |
        sed -n 's/.*leader killed -> write accepted after \([0-9]*\) ms.*/\1/p' >>"$cluster"
    cargo nextest run --no-fail-fast -p shoal --lib --no-capture \
        manager::tests::three_managers_replicate_fail_over_then_lose_quorum 2>&1 |
        sed -n 's/.*failover: leader stopped → write accepted by the new leader in \([0-9]*\) ms.*/\1/p' >>"$inproc"
done

summarize "cluster failover (kill -9 of the leader of 3)" "$cluster"
summarize "in-process failover (leader stopped)" "$inproc"
