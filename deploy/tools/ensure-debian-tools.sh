#!/usr/bin/env bash
# Installs the Debian-only tools the checks use: promtool (package prometheus) and
# inotifywait (package inotify-tools). Under CI=true a tool that cannot be had is an error.
set -euo pipefail
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v inotifywait >/dev/null 2>&1 || need+=(inotify-tools)
[ ${#need[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "installing ${need[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
command -v inotifywait >/dev/null 2>&1 || missing+=(inotifywait)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: ${missing[*]} missing and could not be installed with apt-get (run as root on Debian)" >&2
    exit 1
  fi
  echo "warning: ${missing[*]} missing: the checks that need them will be skipped with a reason" >&2
fi
