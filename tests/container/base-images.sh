#!/usr/bin/env bash
# Makes, once, the two base images the Dockerfile names, from this machine's own Debian
# mirror and Rust toolchain: no container registry is reachable here. The names are the
# real Docker Hub ones, so the same Dockerfile works unchanged with Docker elsewhere:
#   debian:bookworm-slim       debootstrap --variant=minbase bookworm, imported
#   rust:<ver>-slim-bookworm   the above + gcc/libc6-dev/pkg-config + the host's toolchain
# An image that already exists is kept (CI caches them between runs); --force remakes both.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/container"
mkdir -p "$work"

force=0
[ "${1:-}" = "--force" ] && force=1

log() { printf '[base-images] %s\n' "$*"; }

# The build stage's base image, as the Dockerfile spells it (`FROM rust:… AS build`).
rust_image=$(awk 'toupper($1) == "FROM" && $2 ~ /^rust:/ { print $2; exit }' "$root/Dockerfile")
runtime_image=$(awk 'toupper($1) == "FROM" && $2 ~ /^debian:/ { print $2; exit }' "$root/Dockerfile")
[ -n "$rust_image" ] && [ -n "$runtime_image" ] || { echo "Dockerfile names no rust:/debian: base" >&2; exit 1; }

# The mirror apt uses on this machine (deb822 or one-line sources).
mirror=$(grep -rhoE '^URIs: *http[^ ]*/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | sed 's/^URIs: *//') || true
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '^deb +http[^ ]*/debian/? +bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | head -n1) || true
fi
mirror=${mirror:-http://deb.debian.org/debian}

# Tag as Docker would resolve the short name, and as podman stores local images.
tag_all() {
  local id=$1 name=$2
  podman tag "$id" "$name" "docker.io/library/$name"
}

if [ "$force" = 1 ] || ! podman image exists "$runtime_image"; then
  log "debootstrap bookworm (minbase) from $mirror -> $runtime_image"
  rootfs="$work/rootfs-bookworm"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # What the official slim image leaves out as well: package lists, caches, docs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  id=$(tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$runtime_image")
  tag_all "$id" "$runtime_image"
  rm -rf "$rootfs"
else
  log "$runtime_image exists"
fi

if [ "$force" = 1 ] || ! podman image exists "$rust_image"; then
  want=$(echo "$rust_image" | sed -E 's/^rust:([0-9]+\.[0-9]+(\.[0-9]+)?)-.*/\1/')
  sysroot=$(rustc --print sysroot)
  have=$(rustc --version | awk '{print $2}')
  case "$have" in
    "$want"|"$want".*) ;;
    *) echo "the Dockerfile builds with Rust $want but this machine's rustc is $have" >&2; exit 1 ;;
  esac
  log "$rust_image from $runtime_image + the host's toolchain ($have, $sysroot)"
  # Hard links, not copies: the build context costs no disk. Docs and rustfmt/clippy stay out.
  ctx="$work/rust-context"
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain/bin"
  sysroot=$(readlink -f "$sysroot")
  for bin in cargo rustc rustdoc; do cp -al "$sysroot/bin/$bin" "$ctx/toolchain/bin/"; done
  cp -al "$sysroot/lib" "$sysroot/libexec" "$ctx/toolchain/" 2>/dev/null || cp -al "$sysroot/lib" "$ctx/toolchain/"
  nice -n 10 podman build --pull=never --isolation chroot --network host \
    --build-arg BASE="$runtime_image" \
    -f "$here/rust-base.Containerfile" -t "$rust_image" "$ctx" >"$work/rust-base.log" 2>&1 \
    || { tail -n 30 "$work/rust-base.log" >&2; exit 1; }
  tag_all "$rust_image" "$rust_image"
  rm -rf "$ctx"
else
  log "$rust_image exists"
fi
