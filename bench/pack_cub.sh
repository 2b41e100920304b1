#!/usr/bin/env bash
# Pack the real CUB-128 copy for the device machine: re-encoded at 112 px, JPEG quality 42, with
# ../shared/gpu/make_cub_compact.py, as ONE .tgz in .data/ (git-ignored): thousands of small files
# would cost a file-system block each against the 64 MiB carry limit. Never commit it (CUB licence).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:-../shared/data/cub200-128/CUB_200_2011}
grep -qx '/.data/' .git/info/exclude 2>/dev/null || echo '/.data/' >> .git/info/exclude
TMP=$(mktemp -d)
python3 ../shared/gpu/make_cub_compact.py "$SRC" "$TMP/CUB_200_2011" 112 42
mkdir -p .data
tar -czf .data/cub112.tgz -C "$TMP" CUB_200_2011
rm -rf "$TMP"
du -h .data/cub112.tgz
