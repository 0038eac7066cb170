#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs, cargo-fuzz + libFuzzer) one after the
# other, each on its seed corpus (fuzz/corpus/TARGET, read only) plus a working corpus that
# grows across runs (fuzz/target/corpus/TARGET, not checked in). Installs cargo-fuzz when
# missing. Prints, per target, the executions and the crashes (a crash leaves its input in
# fuzz/artifacts/TARGET/); exits non-zero if any target crashed.
#
#   scripts/fuzz.sh [SECONDS]            each target for SECONDS (default 5)
#   scripts/fuzz.sh --runs N [TARGET..]  each target (or those named) for N executions
#   scripts/fuzz.sh SECONDS TARGET..     only the targets named
#
# Stable Rust: cargo-fuzz passes -Z flags, so RUSTC_BOOTSTRAP=1 is set for its builds.
# No sanitizer: Shoal forbids unsafe code; what the targets look for are panics (overflow
# checks and debug assertions are on), runaway allocations (-rss_limit_mb, -malloc_limit_mb)
# and hangs (-timeout).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

seconds=5
runs=""
targets=()
while (($#)); do
    case "$1" in
    --runs)
        runs="$2"
        shift 2
        ;;
    --runs=*)
        runs="${1#--runs=}"
        shift
        ;;
    -h | --help)
        sed -n '2,16p' "$0"
        exit 0
        ;;
    [0-9]*)
        seconds="$1"
        shift
        ;;
    *)
        targets+=("$1")
        shift
        ;;
    esac
done
if ((${#targets[@]} == 0)); then
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
build=(--fuzz-dir fuzz --sanitizer none --codegen-units 16)
log "building the fuzz targets"
cargo fuzz build "${build[@]}"
bin_dir="fuzz/target/x86_64-unknown-linux-gnu/release"

limits=(-print_final_stats=1 -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10)
if [[ -n $runs ]]; then
    limits+=(-runs="$runs")
else
    limits+=(-max_total_time="$seconds")
fi

failed=0
summary=()
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    work="fuzz/target/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$work" "$artifacts" "$seeds"
    out=$(mktemp)
    start=$SECONDS
    rc=0
    # New inputs go to the first corpus directory: the working one, never the seeds.
    "$bin_dir/$t" "${limits[@]}" -artifact_prefix="$artifacts/" "$work" "$seeds" \
        >"$out" 2>&1 || rc=$?
    took=$((SECONDS - start))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | tail -1 | grep -o '[0-9]*$' || true)
    crashes=0
    if ((rc != 0)); then
        crashes=1
        failed=1
        log "$t: libFuzzer exited with $rc; its output:"
        tail -40 "$out" >&2
    fi
    rm -f "$out"
    summary+=("$(printf '%-14s %12s %8s %6ss' "$t" "${execs:-?}" "$crashes" "$took")")
done

printf '%-14s %12s %8s %7s\n' target executions crashes time
printf '%s\n' "${summary[@]}"
if ((failed)); then
    log "a fuzz target crashed: its input is in fuzz/artifacts/TARGET/ (replay it with fuzz/target/x86_64-unknown-linux-gnu/release/TARGET FILE)"
    exit 1
fi
