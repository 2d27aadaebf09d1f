#!/usr/bin/env bash
# What a user who runs `pip install chunkfs` gets: the package without test extras in a fresh
# virtualenv, `chunkfs --help`, and an init / import / export round trip that must give back
# the same bytes. .ci/run runs it (tools/setup.sh has installed the FUSE headers pyfuse3 builds
# against). Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q .
chunkfs="$work/venv/bin/chunkfs"
"$chunkfs" --help >/dev/null
for cmd in init import export mount gc fsck drill find log; do
  "$chunkfs" "$cmd" --help >/dev/null
done
mkdir -p "$work/src/run1/checkpoint-1"
head -c 3000000 /dev/urandom >"$work/src/run1/checkpoint-1/model.bin"
printf '{"global_step": 1}' >"$work/src/run1/checkpoint-1/trainer_state.json"
"$chunkfs" init "$work/repo" >/dev/null
"$chunkfs" import --repo "$work/repo" "$work/src/run1" /run1 >/dev/null
"$chunkfs" export --repo "$work/repo" /run1 "$work/out" >/dev/null
diff -r "$work/src/run1" "$work/out"
"$chunkfs" fsck --repo "$work/repo" >/dev/null
echo "check_install: chunkfs installs without extras; --help and an init/import/export round trip work"
