#!/usr/bin/env bash
# Builds the release binaries for the machines Shoal runs on and checks that each runs:
#
#   scripts/build-release.sh [--out DIR] [--install-deps] [TARGET...]
#
# TARGETs: x86_64, aarch64 (Raspberry Pi OS 64-bit, Pi 3/4/5), armv7 (Raspberry Pi OS
# 32-bit, Pi 2/3/4); default: all three. Writes DIR/shoal-TARGET (default DIR: dist/), the
# names scripts/install.sh --from DIR and scripts/bootstrap-pi.sh pick from by `uname -m`,
# and checks each with `shoal version` (natively, or under Debian's qemu-user-static).
#
# A cross target needs a Rust standard library for it and a C cross-compiler (ring, the
# crypto backend, has C and assembly parts; nothing else is native). Either:
#   - rustup:  rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#              apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static
#   - or Debian 12 alone (no rustup download; what --install-deps does, as root): rustc-web
#     (Debian's Rust 1.96 for bookworm) with its standard library for each target through
#     multiarch, the cross gcc and qemu:
#              dpkg --add-architecture arm64; dpkg --add-architecture armhf; apt-get update
#              apt-get install rustc-web libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf \
#                  gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static
#            cross targets are then built with RUSTC=/usr/bin/rustc (in target/cross/).
# x86_64 is built with the default toolchain. A target that cannot be built here is
# reported with what is missing, and the script fails at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=dist INSTALL_DEPS=0 TARGETS=()
while (($#)); do
    case $1 in
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --install-deps) INSTALL_DEPS=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    x86_64 | aarch64 | armv7) TARGETS+=("$1") ;;
    *) echo "build-release.sh: unknown argument $1 (targets: x86_64 aarch64 armv7)" >&2; exit 2 ;;
    esac
    shift
done
((${#TARGETS[@]})) || TARGETS=(x86_64 aarch64 armv7)
mkdir -p "$OUT"

log() { printf '==> %s\n' "$*"; }

triple() {
    case $1 in
    x86_64) echo x86_64-unknown-linux-gnu ;;
    aarch64) echo aarch64-unknown-linux-gnu ;;
    armv7) echo armv7-unknown-linux-gnueabihf ;;
    esac
}
gnu_prefix() {
    case $1 in
    aarch64) echo aarch64-linux-gnu ;;
    armv7) echo arm-linux-gnueabihf ;;
    esac
}
debian_arch() {
    case $1 in
    aarch64) echo arm64 ;;
    armv7) echo armhf ;;
    esac
}
qemu_of() {
    case $1 in
    aarch64) echo qemu-aarch64-static ;;
    armv7) echo qemu-arm-static ;;
    esac
}
# The target's dynamic loader, where multiarch installs it (libc6:ARCH).
loader_of() {
    case $1 in
    aarch64) echo /lib/ld-linux-aarch64.so.1 ;;
    armv7) echo /lib/ld-linux-armhf.so.3 ;;
    esac
}

# Whether RUSTC (default: rustc) has a standard library for TRIPLE.
has_std() {
    local rustc=$1 triple=$2 dir
    dir=$("$rustc" --print target-libdir --target "$triple" 2>/dev/null) || return 1
    compgen -G "$dir/libstd-*.rlib" >/dev/null
}

install_deps() {
    local missing=() a
    for a in "$@"; do
        [[ $a == x86_64 ]] && continue
        dpkg --print-foreign-architectures | grep -qx "$(debian_arch "$a")" ||
            dpkg --add-architecture "$(debian_arch "$a")"
        missing+=("libstd-rust-web-dev:$(debian_arch "$a")" "gcc-$(gnu_prefix "$a")" "libc6-dev-$(debian_arch "$a")-cross")
    done
    ((${#missing[@]})) || return 0
    log "apt-get install rustc-web qemu-user-static ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web qemu-user-static "${missing[@]}" >/dev/null
}
((INSTALL_DEPS)) && install_deps "${TARGETS[@]}"

failed=()
for t in "${TARGETS[@]}"; do
    triple=$(triple "$t")
    dest="$OUT/shoal-$t"
    if [[ $t == x86_64 ]]; then
        if [[ $(uname -m) != x86_64 ]]; then
            echo "x86_64: this machine is $(uname -m); build it on an x86_64 machine" >&2
            failed+=("$t")
            continue
        fi
        log "x86_64: cargo build --release --bin shoal"
        cargo build --release --bin shoal
        install -m 0755 target/release/shoal "$dest"
    else
        # A Rust standard library for the target: rustup's, else Debian's rustc-web.
        rustc=''
        if has_std rustc "$triple"; then
            rustc=$(command -v rustc)
        elif [[ -x /usr/bin/rustc ]] && has_std /usr/bin/rustc "$triple"; then
            rustc=/usr/bin/rustc
        fi
        cc="$(gnu_prefix "$t")-gcc"
        if [[ -z $rustc ]] || ! command -v "$cc" >/dev/null; then
            {
                echo "$t: cannot build $triple here:"
                [[ -z $rustc ]] && echo "  - no Rust standard library for $triple (neither rustup's nor Debian's rustc-web)"
                command -v "$cc" >/dev/null || echo "  - no C cross-compiler $cc (ring needs one)"
                echo "  with rustup:      rustup target add $triple && apt-get install gcc-$(gnu_prefix "$t") qemu-user-static"
                echo "  on Debian 12:     $0 --install-deps $t   (as root: rustc-web and libstd-rust-web-dev:$(debian_arch "$t"))"
                echo "  then:             CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_LINKER=$cc CC_${triple//-/_}=$cc cargo build --release --bin shoal --target $triple"
            } >&2
            failed+=("$t")
            continue
        fi
        upper=$(tr 'a-z-' 'A-Z_' <<<"$triple")
        log "$t: cargo build --release --bin shoal --target $triple (rustc: $("$rustc" --version), cc: $cc)"
        # Debian's rustc is another compiler than rustup's: its own target dir, so neither
        # build invalidates the other's.
        target_dir=target
        [[ $rustc == /usr/bin/rustc ]] && target_dir=target/cross
        env RUSTC="$rustc" CARGO_TARGET_DIR="$target_dir" \
            "CARGO_TARGET_${upper}_LINKER=$cc" "CC_${triple//-/_}=$cc" "AR_${triple//-/_}=$(gnu_prefix "$t")-ar" \
            cargo build --release --bin shoal --target "$triple"
        install -m 0755 "$target_dir/$triple/release/shoal" "$dest"
    fi

    # Does it run?
    run=("$dest")
    if [[ $t != x86_64 || $(uname -m) != x86_64 ]] && [[ $(uname -m) != "$t"* ]]; then
        qemu=$(qemu_of "$t")
        if ! command -v "$qemu" >/dev/null; then
            echo "$t: built $dest, but cannot run it here: no $qemu (apt-get install qemu-user-static)" >&2
            failed+=("$t")
            continue
        fi
        # One C library, loader and libc together: the multiarch one when it is installed
        # (libc6:ARCH, which --install-deps brings), else the cross toolchain's. `-L` with
        # both present mixes the cross loader with the multiarch libc (different Debian
        # builds of glibc), and a program that starts a thread crashes in the loader.
        if [[ -e $(loader_of "$t") ]]; then
            run=("$qemu" "$dest")
        else
            run=("$qemu" -L "/usr/$(gnu_prefix "$t")" "$dest")
        fi
    fi
    if version=$("${run[@]}" version 2>&1) && [[ $version == shoal\ * ]]; then
        log "$t: $dest ($(du -h "$dest" | cut -f1)): \`${run[*]} version\` says: $version"
    else
        echo "$t: $dest does not run: ${version:-no output}" >&2
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "build-release.sh: not built or not working: ${failed[*]} (see above)" >&2
    exit 1
fi
log "release binaries in $OUT/: $(cd "$OUT" && echo shoal-*)"
