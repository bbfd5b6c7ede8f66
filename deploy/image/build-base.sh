#!/usr/bin/env bash
# Builds the stand-in for python:3.11-slim-bookworm from Debian's own packages, for machines that
# reach Debian's mirror but no container registry:
#   debootstrap --variant=minbase bookworm + python3 (3.11) + python3-venv + ca-certificates,
# imported with `podman import` as $1 (default localhost/watcher-base:bookworm). A base already in
# podman's store is reused; WATCHER_BASE_REBUILD=1 builds it again.
# Differences from the official image: python is Debian's /usr/bin/python3 (the official one is
# /usr/local/bin/python), and it has no pip outside a venv (PEP 668); the Dockerfile copes with both.
set -euo pipefail
name=${1:-localhost/watcher-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$name" && [ "${WATCHER_BASE_REBUILD:-}" != 1 ]; then
  echo "base $name: cached in podman's store" >&2
  exit 0
fi
root=$(mktemp -d /var/tmp/watcher-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base $name: debootstrap --variant=minbase bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
  >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What the image does not need at run time: package lists and downloaded .debs, logs, docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/*
tar --numeric-owner -C "$root" -c . |
  podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$name" >/dev/null
echo "base $name: imported, $(podman image inspect --format '{{.Size}}' "$name") bytes" >&2
