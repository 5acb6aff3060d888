#!/usr/bin/env bash
# Create the project's virtual environment. Idempotent: rerunning only adds what is missing.
#   tools/setup.sh [python] [venv]
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}

# System libraries: open3d needs libusb; its offscreen renderer needs Vulkan (CPU: mesa lavapipe).
# The rating page's browser test needs chromium and its driver (selenium); SETUP_BROWSER=0 leaves them out.
SYS_PKGS="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
BROWSER_PKGS="chromium chromium-driver"
missing=""
for p in $SYS_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
browser_missing=""
if [ "${SETUP_BROWSER:-1}" != 0 ]; then
  for p in $BROWSER_PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || browser_missing="$browser_missing $p"
  done
fi
if [ -n "$missing$browser_missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq || echo "[setup] warning: apt-get update failed"
    if [ -n "$missing" ]; then
      echo "[setup] installing Debian packages:$missing"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    if [ -n "$browser_missing" ]; then
      # Only the rating page's browser test needs these: a failure is a warning, not a failed setup.
      echo "[setup] installing Debian packages:$browser_missing (the rating page's browser test)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $browser_missing >/dev/null \
        || echo "[setup] warning: could not install$browser_missing; the browser test will be skipped"
    fi
  else
    [ -z "$missing" ] || {
      echo "[setup] missing system packages:$missing"
      echo "[setup] install them with: sudo apt-get install$missing   (open3d fails to import without libusb-1.0-0)"
    }
    [ -z "$browser_missing" ] || {
      echo "[setup] missing system packages:$browser_missing (only for the rating page's browser test)"
      echo "[setup] install them with: sudo apt-get install$browser_missing"
    }
  fi
fi
if [ -n "${SETUP_SYSTEM_ONLY:-}" ]; then
  exit 0  # tests of this step stop here
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
