#!/usr/bin/env bash
# `make image`: builds deploy/Dockerfile with buildah (no Docker engine, no daemon) and tags it
# $IMAGE, by default the name and tag the kustomize base deploys: ghcr.io/watcher/watcher:<version
# in pyproject.toml>.
#
# The base: $BASE if given; otherwise the Dockerfile's default, python:3.11-slim-bookworm, if it is in
# podman's store or can be pulled; otherwise the equivalent built from Debian bookworm's packages
# (deploy/image/build-base.sh), cached in podman's store as localhost/watcher-base:bookworm.
#
# pip in the build uses $PIP_INDEX_URL if set (else pypi.org) and trusts the host's CA bundle
# ($PIP_CERT, else /etc/ssl/certs/ca-certificates.crt), mounted for the build only: behind a
# TLS-inspecting proxy the base's own bundle would not do. IIDFILE=path writes the image id there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PATH=$PATH:/usr/sbin:/sbin
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
[ -n "$version" ] || { echo "error: no version in pyproject.toml" >&2; exit 1; }
image=${IMAGE:-ghcr.io/watcher/watcher:$version}
official=docker.io/library/python:3.11-slim-bookworm
fallback=localhost/watcher-base:bookworm
for tool in buildah podman; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing: bash deploy/tools/ensure-debian-tools.sh" >&2; exit 1; }
done

if [ -n "${BASE:-}" ]; then
  base=$BASE
elif podman image exists "$official" || podman pull --quiet "$official" >/dev/null 2>&1; then
  base=$official
else
  echo "cannot pull $official: using the equivalent base built from Debian bookworm's packages" >&2
  bash deploy/image/build-base.sh "$fallback"
  base=$fallback
fi

args=(--isolation chroot --network host --no-cache --force-rm -f deploy/Dockerfile -t "$image"
  --build-arg "BASE=$base"
  --label "org.opencontainers.image.base.name=$base"
  --label "org.opencontainers.image.version=$version")
[ -n "${PIP_INDEX_URL:-}" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] && args+=(-v "$(realpath "$ca"):/etc/ssl/certs/ca-certificates.crt:ro")
iidfile=${IIDFILE:-$(mktemp)}
args+=(--iidfile "$iidfile")

previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
start=$SECONDS
buildah bud "${args[@]}" . >&2
id=$(cat "$iidfile"); id=${id#sha256:}
[ -n "${IIDFILE:-}" ] || rm -f "$iidfile"
# The image this tag named before is garbage now, unless a container or another tag still uses it.
if [ -n "$previous" ] && [ "$previous" != "$id" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$id")
echo "built $image (${id:0:12}) on $base in $((SECONDS - start)) s: $((size / 1000000)) MB" >&2
