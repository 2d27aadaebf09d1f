#!/usr/bin/env bash
# Sets up everything chunkfs needs on a Debian machine with only Python on it:
# the FUSE 3 packages pyfuse3 builds against, a virtualenv in .venv, and
# chunkfs with its test dependencies in it. Idempotent: reruns are quick.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pkg in fuse3 libfuse3-dev pkg-config attr rsync; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.chunkfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing chunkfs and its dependencies into .venv (torch: the CPU build)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
