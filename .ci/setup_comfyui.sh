#!/usr/bin/env bash
# Sets up the ComfyUI source tree that the ComfyUI, server and browser test tiers need, outside this
# repository, and installs its requirements into this python3; prints the tree's path (for COMFYUI_PATH).
#
#   bash .ci/setup_comfyui.sh [DEST]     DEST default: ${XDG_CACHE_HOME:-~/.cache}/comfyui-freqca
#
# The tree comes from $COMFYUI_TARBALL, else ../shared/comfyui/ComfyUI-v0.3.64.tar.gz beside this repository;
# an unpacked tree from the same tarball is reused. Requirements: torch==2.13.0 first (the CPU build), then
# ComfyUI's requirements.txt without torch, torchvision, torchaudio (no torchvision wheel matches the CPU
# torch; the tests register a stand-in), kornia and spandrel (optional, they pull a CUDA torch), plus requests.
# Only the path goes to stdout; everything else goes to stderr.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${COMFYUI_TARBALL:-$repo/../shared/comfyui/ComfyUI-v0.3.64.tar.gz}"
dest="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-freqca}"
if [ ! -f "$tarball" ]; then
  echo "setup_comfyui: no ComfyUI tarball at $tarball (set COMFYUI_TARBALL)" >&2
  exit 1
fi
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
case "$dest/" in
  "$repo"/*) echo "setup_comfyui: DEST $dest is inside the repository $repo; choose a folder outside it" >&2; exit 1 ;;
esac
tree="$dest/ComfyUI"
sum="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [ -f "$tree/main.py" ] && [ "$(cat "$dest/tarball.sha256" 2>/dev/null)" = "$sum" ]; then
  echo "setup_comfyui: reusing $tree" >&2
else
  echo "setup_comfyui: unpacking $tarball into $dest" >&2
  rm -rf "$tree" "$dest/tarball.sha256"
  tar -xzf "$tarball" -C "$dest"
  echo "$sum" > "$dest/tarball.sha256"
fi
grep -vE '^[[:space:]]*(torch|torchvision|torchaudio|kornia|spandrel)[[:space:]]*([<>=!~;[].*)?$' \
  "$tree/requirements.txt" > "$dest/requirements-cpu.txt"
echo "requests" >> "$dest/requirements-cpu.txt"
python3 -m pip install -q "torch==2.13.0" >&2
python3 -m pip install -q -r "$dest/requirements-cpu.txt" >&2
echo "$tree"
