"""Realism table: twin frames vs the real reference frames and real sweep (issue 15).

Usage: python tools/realism_table.py TWIN_RAW_DIR [--every 10] [--out table.csv]
TWIN_RAW_DIR: a twin's raw/ folder (or one specimen's), e.g. data/twin/default/raw.
Real frames: ../shared/reference_images/*.png and every 5th frame of ../shared/real_sweep (0.05392 mm/px).
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ultrabones.twin import realism

ap = argparse.ArgumentParser()
ap.add_argument("twin_raw")
ap.add_argument("--every", type=int, default=10)
ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1] / ".." / "shared"))
ap.add_argument("--real-cache", default="/tmp/realism_real.csv")
ap.add_argument("--out", default=None)
a = ap.parse_args()
raw = Path(a.twin_raw)
spacing = json.loads((raw / "system.json").read_text())["spacing_mm"] if (raw / "system.json").is_file() else \
    json.loads((raw.parent / "system.json").read_text())["spacing_mm"]
files = sorted(p for p in raw.rglob("images/*.png") if "phantom" not in p.parts)
twin = realism.frames_table(realism.read_frames(files, spacing, every=a.every))
cache = Path(a.real_cache)
if cache.is_file():
    real = pd.read_csv(cache)
else:
    shared = Path(a.shared)
    frames = realism.read_frames((shared / "reference_images").glob("*.png"), realism.REAL_SPACING_MM)
    frames += realism.read_frames((shared / "real_sweep").rglob("UltrasoundImages/*.png"), realism.REAL_SPACING_MM,
                                  every=5)
    real = realism.frames_table(frames)
    real.to_csv(cache, index=False)
table = realism.compare(twin, real)
pd.set_option("display.width", 200)
print(f"twin: {len(twin)} frames from {raw}; real: {len(real)} frames")
print(table.round(3).to_string())
if a.out:
    table.to_csv(a.out)
