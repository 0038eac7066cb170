#!/usr/bin/env bash
# Builds the local test image `shoal-test/busybox:latest` with no registry: a root filesystem made
# of the static busybox from Debian's `busybox-static` package plus one symlink per applet (so
# `sh`, `httpd`, `sleep`, `nc`, `wget`, `hostname`, `cat`, `echo`, ... are on PATH), imported with
# `docker import`.
#
# Idempotent: when the image already exists and was built by this recipe from the same busybox
# binary (labels `shoal.test-image.recipe` and `shoal.test-image.busybox-sha256`), nothing is done.
#
# Environment:
#   SHOAL_TEST_IMAGE   image reference to build (default shoal-test/busybox:latest)
#   BUSYBOX            path of a static busybox binary (default /bin/busybox, installed if missing)
#   DOCKER             docker CLI to use (default docker)
set -euo pipefail

IMAGE="${SHOAL_TEST_IMAGE:-shoal-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
DOCKER="${DOCKER:-docker}"
# Bump when the layout of the root filesystem changes, so existing images are rebuilt.
RECIPE=2

log() { printf 'test-image: %s\n' "$*" >&2; }
die() { printf 'test-image: error: %s\n' "$*" >&2; exit 1; }

is_static() {
    [ -x "$1" ] || return 1
    # ldd prints "not a dynamic executable" (or "statically linked") for static binaries.
    local out
    out="$(ldd "$1" 2>&1 || true)"
    grep -Eq 'not a dynamic executable|statically linked' <<<"$out"
}

install_busybox_static() {
    [ "$(id -u)" -eq 0 ] || die "$BUSYBOX is not a static busybox and installing busybox-static needs root"
    command -v apt-get >/dev/null || die "$BUSYBOX is not a static busybox and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    log "installing busybox-static"
    if ! apt-get install -y --no-install-recommends busybox-static >/dev/null; then
        log "apt-get install failed; running apt-get update first"
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends busybox-static >/dev/null
    fi
}

command -v "$DOCKER" >/dev/null || die "docker CLI '$DOCKER' not found"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "the Docker engine is not reachable (is dockerd running and may this user use it?)"

if ! is_static "$BUSYBOX"; then
    if [ "$BUSYBOX" = /bin/busybox ]; then
        install_busybox_static
    fi
    is_static "$BUSYBOX" || die "$BUSYBOX is not a statically linked busybox"
fi

SHA="$(sha256sum "$BUSYBOX" | cut -d' ' -f1)"

if current="$("$DOCKER" image inspect "$IMAGE" \
        --format '{{index .Config.Labels "shoal.test-image.recipe"}} {{index .Config.Labels "shoal.test-image.busybox-sha256"}}' \
        2>/dev/null)" && [ "$current" = "$RECIPE $SHA" ]; then
    log "$IMAGE is up to date"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/www,home}
chmod 1777 "$ROOT/tmp"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"

# One symlink per applet, at the path busybox itself reports (`--list-full`), like `busybox --install -s`.
count=0
while IFS= read -r applet; do
    [ -n "$applet" ] || continue
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$ROOT/$(dirname "$applet")"
    ln -sf /bin/busybox "$ROOT/$applet"
    count=$((count + 1))
done < <("$BUSYBOX" --list-full)
[ "$count" -gt 0 ] || die "$BUSYBOX --list-full listed no applets"

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"

log "importing $IMAGE ($count applets, busybox sha256 $SHA)"
tar --numeric-owner --owner=0 --group=0 -C "$ROOT" -cf - . \
    | "$DOCKER" import \
        --change 'CMD ["sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL shoal.test-image.recipe=$RECIPE" \
        --change "LABEL shoal.test-image.busybox-sha256=$SHA" \
        - "$IMAGE" >/dev/null

# Check the applets the tests rely on are on PATH inside the image.
"$DOCKER" run --rm --network none "$IMAGE" \
    sh -c 'for a in sh httpd sleep nc wget hostname cat echo test touch; do command -v "$a" >/dev/null || { echo "missing applet $a" >&2; exit 1; }; done' \
    || die "the imported image lacks required applets"
log "built $IMAGE"
