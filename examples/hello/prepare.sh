#!/usr/bin/env bash
# Copies a static busybox next to the Dockerfile: the image is built FROM
# scratch, so it needs a binary with no shared libraries.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src=${BUSYBOX:-/bin/busybox}
if [ ! -x "$src" ] || { command -v file >/dev/null && ! file -L "$src" | grep -q static; }; then
  echo "prepare: no static busybox at $src; on Debian/Ubuntu: apt-get install busybox-static" >&2
  exit 1
fi
cp "$src" "$here/busybox"
echo "prepare: copied $src into $here"
