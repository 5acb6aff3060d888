#!/usr/bin/env bash
# Create the project's virtual environment. Idempotent: rerunning only adds what is missing.
#   tools/setup.sh [python] [venv]
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}

# System libraries: open3d needs libusb; its offscreen renderer needs Vulkan (CPU: mesa lavapipe).
SYS_PKGS="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
missing=""
for p in $SYS_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] missing system packages:$missing"
    echo "[setup] install them with: sudo apt-get install$missing   (open3d fails to import without libusb-1.0-0)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# The torch pair first, pinned: an unpinned torch would download several GB.
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
fi
echo "[setup] installing the project (editable) with its dev extra"
$PIP install -q -e ".[dev]"
"$VENV/bin/python" -c "import ultrabones, torch, segmentation_models_pytorch, pytorch_lightning, trimesh, papermill; print('[setup] ok: ultrabones', ultrabones.__version__, '| torch', torch.__version__)"
"$VENV/bin/python" -c "import open3d" 2>/dev/null || echo "[setup] warning: open3d does not import (missing libusb-1.0-0?); 3D figures fall back to matplotlib"
