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

apt_install busybox-static

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

# nextest does not run doctests: run them first (so the suite's summary closes the run).
log "running the doctests"
cargo test --workspace --doc

log "running the test suite"
cargo nextest run --workspace --no-fail-fast "$@"
