#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need first, so it works on a
# fresh machine: Debian's busybox-static (for the local test image), the test
# image itself, and cargo-nextest when missing.
#
#   scripts/test.sh [extra nextest args]
#
# SHOAL_REQUIRE_DOCKER=1 (set by .ci/run) makes tests that need Docker fail instead
# of skipping when Docker or the test image is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        if [[ $(id -u) -ne 0 ]]; then
            log "not root: cannot install ${missing[*]}; install them and run again"
            return 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

apt_install busybox-static iptables faketime

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

if docker info >/dev/null 2>&1; then
    scripts/test-image.sh
elif [[ "${SHOAL_REQUIRE_DOCKER:-0}" == 1 ]]; then
    log "Docker is not reachable and SHOAL_REQUIRE_DOCKER=1: the Docker tests cannot run"
    exit 1
else
    log "Docker is not reachable: tests that need it will skip (set SHOAL_REQUIRE_DOCKER=1 to fail instead)"
fi

log "building shoal and the tests"
# One build of every target, so the binary under test and the test binaries share
# one feature resolution (and nextest below rebuilds nothing).
cargo build --workspace --all-targets
export SHOAL_BIN="$PWD/target/debug/shoal"

# Nothing the suite starts may outlive it. Daemons and the process driver's shims and
# tasks run in process groups of their own, and containers outlive any process; the
# tests clean up after themselves (tests/src/lib.rs), and this checks that they did, at
# the end and also when the suite fails. What counts as the suite's:
# - a process with this run's SHOAL_TEST_RUN marker in its environment (daemons, shims,
#   test processes, their watchdogs), or naming a state dir the cluster tests used
#   (listed by them in the SHOAL_TEST_LEDGER file: daemons, shims, tasks by their HOME),
#   or a child of one of those, or a member of a process group one of those leads;
# - a container labelled with a node ID of the ledger (cluster tests), or created during
#   the run for a unit-test cluster (`t<pid>-<n>-<test>` / `w<pid>-<n>-<test>`).
# A developer's own cluster is neither. Leftovers are listed, then killed / removed, and
# the script fails.
run_id="$(date +%s)-$$-$RANDOM"
ledger=$(mktemp /tmp/shoal-test-ledger.XXXXXX)
containers_before=$(mktemp /tmp/shoal-test-containers.XXXXXX)
docker_ok() { docker info >/dev/null 2>&1; }
if docker_ok; then
    docker ps -aq --no-trunc --filter label=shoal.cluster >"$containers_before"
fi

# Pids of the suite's processes that are still there (zombies aside).
suite_processes() {
    local patterns own_group found table
    patterns=$(mktemp)
    # Patterns go in a file, so grep never matches its own command line.
    printf 'SHOAL_TEST_RUN=%s\n' "$run_id" >"$patterns"
    awk '$1 == "dir" { print $2 }' "$ledger" | sort -u >>"$patterns"
    found=$(grep -laF -f "$patterns" /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null |
        sed -E 's#^/proc/([0-9]+)/.*#\1#' | sort -un)
    rm -f "$patterns"
    own_group=$(ps -o pgid= -p $$ | tr -d ' ')
    table=$(ps -eo pid=,ppid=,pgid=,stat=)
    # Their children and the members of the groups they lead (never this script's group).
    for _ in 1 2 3; do
        found=$(awk -v found=" $(echo $found) " -v me=$$ -v own="$own_group" '
            $4 ~ /^Z/ { next }
            $1 == me { next }
            index(found, " " $1 " ") || index(found, " " $2 " ") \
                || ($3 != own && index(found, " " $3 " ")) { print $1 }' <<<"$table" | sort -un)
    done
    echo $found
}

# IDs of the suite's containers.
suite_containers() {
    docker_ok || return 0
    local nodes id node cluster
    nodes=$(awk '$1 == "node" { print $2 }' "$ledger" | sort -u)
    docker ps -a --no-trunc --filter label=shoal.cluster \
        --format '{{.ID}}|{{.Label "shoal.node"}}|{{.Label "shoal.cluster"}}' |
        while IFS='|' read -r id node cluster; do
            if { [[ -n $node ]] && grep -qxF -- "$node" <<<"$nodes"; } ||
                { [[ $cluster =~ ^[tw][0-9]+-[0-9]+- ]] && ! grep -qxF -- "$id" "$containers_before"; }; then
                echo "$id"
            fi
        done
}

check_leftovers() {
    unset SHOAL_TEST_RUN SHOAL_TEST_LEDGER
    local procs containers waited=0
    # The test processes' watchdogs may still be cleaning up: give them a moment.
    while :; do
        procs=$(suite_processes)
        containers=$(suite_containers | xargs)
        [[ -z $procs && -z $containers ]] && return 0
        ((waited < 15)) || break
        sleep 1
        waited=$((waited + 1))
    done
    log "the test suite left these behind (killing / removing them now):"
    if [[ -n $procs ]]; then
        ps -o pid,ppid,pgid,etime,args -p "${procs// /,}" >&2 || true
        for p in $procs; do
            [[ $(ps -o pgid= -p "$p" | tr -d ' ') == "$p" ]] && kill -9 -- "-$p" 2>/dev/null
            kill -9 "$p" 2>/dev/null
        done
    fi
    if [[ -n $containers ]]; then
        # shellcheck disable=SC2086
        docker ps -a --no-trunc $(printf -- '--filter id=%s ' $containers) \
            --format 'container {{.ID}} {{.Names}} {{.Status}} node={{.Label "shoal.node"}} cluster={{.Label "shoal.cluster"}}' >&2
        # shellcheck disable=SC2086
        docker rm -f $containers >/dev/null 2>&1
    fi
    return 1
}

finish() {
    local rc=$?
    trap - EXIT
    set +e
    if ! check_leftovers; then
        log "FAILED: processes or containers started by the suite remained after it"
        ((rc)) || rc=1
    fi
    rm -f "$ledger" "$containers_before"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export SHOAL_TEST_RUN="$run_id" SHOAL_TEST_LEDGER="$ledger"

# --- issue 21 ---
# Install, bootstrap, completions and the demo. tests/tests/install.rs needs `ip netns`
# (iproute2), `unshare` (util-linux), systemd-analyze (systemd: the unit is verified with
# it; nothing is started) and the shells whose completions it loads (zsh, fish); they are
# installed here, before the suite runs. Then the demo, checked step by step on the debug
# build built above (about 30-70 s; a cold LTO release build would not fit CI's budget):
# a cluster of three on 127.0.42.x, a rolling update with no failed request, a node
# killed and its task moved; its daemons carry SHOAL_TEST_RUN, so the leftover check
# below covers them too.
apt_install iproute2 util-linux systemd zsh fish
log "running the demo non-interactively (scripts/demo.sh --check)"
scripts/demo.sh --check
# --- end issue 21 ---

# nextest does not run doctests: run them first (so the suite's summary closes the run).
log "running the doctests"
cargo test --workspace --doc

log "running the test suite"
cargo nextest run --workspace --no-fail-fast "$@"

# The fuzz targets' seed corpora run through the decoders in the unit tests above
# (`fuzzing::tests`), and each target gets 2 s of mutations of its corpus there
# (`issue_20_mutated_*`, stable Rust, not coverage-guided). Coverage-guided fuzzing (cargo-fuzz, an instrumented release build of
# every dependency: far beyond CI's time budget from a cold start on 2 cores) is opt-in:
# SHOAL_FUZZ_SECONDS=5 scripts/test.sh, or scripts/fuzz.sh directly (BENCHMARKS.md, "Fuzzing").
if [[ "${SHOAL_FUZZ_SECONDS:-0}" != 0 ]]; then
    log "fuzzing each target for ${SHOAL_FUZZ_SECONDS} seconds"
    scripts/fuzz.sh "${SHOAL_FUZZ_SECONDS}"
fi

# A short chaos run (issue 20): a fixed seed, about 2 minutes of faults (clock steps
# included: libfaketime, Debian's faketime, installed above) and writes on a 3 + 3
# cluster, every invariant checked (scripts/chaos.sh; its leftovers are checked
# above like the suite's).
log "running a short chaos run (seed 7, 120 s)"
scripts/chaos.sh --duration 120 --seed 7
