"""Shared fixtures.

``smoke_metrics(stem)`` runs the numbered notebooks on ``params/smoke.yaml``,
in order and once per test session, in a temporary build and twin folder, and
returns the metrics JSON that ``stem`` wrote. Notebook tests assert on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "00_simulate",
    "01_calibration",
    "02_labeling",
    "03_rating_statistics",
    "04_training",
    "05_evaluation",
    "06_reconstruction",
    "07_summary",
]


class SmokeRun:
    """Runs the smoke profile's notebooks lazily, in order, in a temporary tree."""

    def __init__(self, base: Path):
        self.base = base
        self.env = dict(os.environ)
        self.env["ULTRABONES_BUILD_ROOT"] = str(base / "build")
        self.env["ULTRABONES_TWIN_ROOT"] = str(base / "twin")
        self.env.setdefault("OMP_NUM_THREADS", "2")
        self.done: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.input_digest: dict[str, str] | None = None  # the input dataset's files right after 01 wrote it

    @property
    def build(self) -> Path:
        return self.base / "build" / "smoke"

    @property
    def twin(self) -> Path:
        return self.base / "twin" / "smoke"

    def merged(self, stem: str) -> dict:
        """``stem``'s metrics JSON with the twin's measurements against the truth merged in
        (``truth/measurements/<stem>.json``, which the stage's measurement cell wrote behind the truth wall)."""
        from ultrabones.twin import measure

        metrics = json.loads((self.build / "metrics" / f"{stem}.json").read_text())
        return measure.merge_metrics(metrics, measure.measured_runs(self.twin, [stem]).get(stem))

    def run(self, stem: str, *extra: str) -> subprocess.CompletedProcess:
        """Run one notebook through the CLI (no caching)."""
        return subprocess.run(
            [sys.executable, "-m", "ultrabones", "run", stem, "--profile", "smoke", "--no-progress", *extra],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def metrics(self, stem: str) -> dict:
        """Metrics of ``stem``, running it (and every stage before it) first if needed."""
        if stem in self.done:
            return self.done[stem]
        if stem in self.failed:
            pytest.fail(self.failed[stem])
        for prev in STAGES[: STAGES.index(stem)]:
            if prev not in self.done:
                self.metrics(prev)
        if stem == STAGES[0]:  # as make does before any stage: the inputs' digest every stamp depends on
            subprocess.run([sys.executable, "-m", "ultrabones", "inputs-digest", "--profile", "smoke",
                            "--out", str(self.build / "inputs.digest")], cwd=ROOT, env=self.env, check=True,
                           capture_output=True, timeout=300)
        proc = self.run(stem, "--stamp", str(self.build / "stamps" / f"{stem}.done"))
        if proc.returncode != 0:
            self.failed[stem] = f"{stem} failed on smoke:\n{proc.stderr[-4000:]}"
            pytest.fail(self.failed[stem])
        self.done[stem] = self.merged(stem)
        if stem == "01_calibration":
            self.input_digest = self.dataset_digest()
        return self.done[stem]

    def dataset_digest(self) -> dict[str, str]:
        """SHA-256 of every file of the twin's input dataset (what 01 wrote; every later stage only reads it)."""
        import hashlib

        root = self.twin / "dataset"
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> SmokeRun:
    return SmokeRun(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="session")
def smoke_metrics(smoke):
    return smoke.metrics
