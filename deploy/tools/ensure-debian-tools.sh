#!/usr/bin/env bash
# Installs the Debian-only tools the checks use: promtool (package prometheus), inotifywait
# (inotify-tools), and the container tools of `make image` and its test: buildah, podman, runc
# (podman's runtime here: crun refuses a hybrid cgroup layout) and debootstrap (the base image built
# from Debian's packages where no registry can be reached), and systemd-analyze (systemd: it checks
# deploy/systemd offline), and bindfs (the cluster tests' two FUSE views of one folder, two "nodes"
# with their own attribute caches). Under CI=true a tool that cannot be had is an error.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin  # debootstrap lives in /usr/sbin
# command:package
tools=(promtool:prometheus inotifywait:inotify-tools buildah:buildah podman:podman runc:runc debootstrap:debootstrap systemd-analyze:systemd bindfs:bindfs)
need=()
for pair in "${tools[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "installing ${need[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
missing=()
for pair in "${tools[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: ${missing[*]} missing and could not be installed with apt-get (run as root on Debian)" >&2
    exit 1
  fi
  echo "warning: ${missing[*]} missing: the checks that need them will be skipped with a reason" >&2
fi
