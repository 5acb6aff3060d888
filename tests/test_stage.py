"""Stage bookkeeping: metrics provenance, figure manifest, resumable cache, summary rules."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from ultrabones.core.cache import SpecimenCache
from ultrabones.pipeline import stage
from ultrabones.pipeline import summary  # noqa: E402
from ultrabones.core.paths import FIGURES_DIR, Paths  # noqa: E402
from ultrabones.core.params import NOTEBOOKS  # noqa: E402


@pytest.fixture
def paths(tmp_path):
    return Paths(tmp_path / "build", tmp_path / "twin", tmp_path / "figures")


def test_metrics_with_provenance(paths):
    f = stage.write_metrics(paths, "02_labeling", {"a": 1.5, "nan": float("nan")}, params={"gamma_mm": 0.3})
    data = json.loads(f.read_text())
    assert data["a"] == 1.5 and data["nan"] is None
    prov = data["_provenance"]
    assert prov["notebook"] == "02_labeling" and prov["twin"] is True and len(prov["params_hash"]) == 16
    assert stage.read_metrics(paths, "02_labeling")["a"] == 1.5
    with pytest.raises(FileNotFoundError, match="run notebook 05_evaluation first"):
        stage.read_metrics(paths, "05_evaluation")


def test_figures_and_tables_are_recorded(paths):
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    stage.save_figure(fig, paths, "fig_x", "05_evaluation", pdf=True)
    stage.save_table(pd.DataFrame({"a": [1.23456], "b": ["x"]}), paths, "table_y", "07_summary")
    manifest = json.loads((paths.figures_dir / stage.MANIFEST).read_text())
    assert manifest == {"fig_x.pdf": "05_evaluation", "fig_x.png": "05_evaluation",
                        "table_y.csv": "07_summary", "table_y.md": "07_summary"}
    assert "| 1.235 | x |" in (paths.figures_dir / "table_y.md").read_text()
    assert summary.orphan_figures(paths.figures_dir) == []
    (paths.figures_dir / "stray.png").write_bytes(b"x")
    assert summary.orphan_figures(paths.figures_dir) == ["stray.png"]


def test_specimen_cache_resumes_and_invalidates(paths):
    cache = SpecimenCache(paths, "02_labeling")
    assert cache.get("specimen01", {"k": 1}) is None
    cache.put("specimen01", {"k": 1}, {"err": 0.2})
    assert cache.get("specimen01", {"k": 1}) == {"err": 0.2}
    assert cache.get("specimen01", {"k": 2}) is None  # parameters changed: redo
    assert cache.all() == {"specimen01": {"err": 0.2}}


def test_specimen_cache_keys_hold_the_inputs_content(paths, tmp_path):
    """A key names the content of the inputs, not their times: same bytes hit, other bytes miss."""
    import os

    from ultrabones.core import cache as C

    f = tmp_path / "in" / "a.png"
    f.parent.mkdir()
    f.write_bytes(b"first")
    sc = SpecimenCache(paths, "06_reconstruction")
    sc.put("s", {"k": 1}, {"v": 1}, inputs=[f], root=f.parent)
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) == {"v": 1}
    st = f.stat()
    f.write_bytes(b"other")  # same size; the time is put back: only the content tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) is None
    f.write_bytes(b"first")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5))  # a touch without a change still hits
    assert sc.get("s", {"k": 1}, inputs=[f], root=f.parent) == {"v": 1}
    assert C.file_digest(tmp_path / "nothing") == "missing"
    # digests persist across runs under (path, size, mtime_ns)
    store = C.DigestStore(tmp_path / "digests.json")
    d = C.file_digest(f)
    store.save()
    C._DIGESTS.clear()
    C.DigestStore(tmp_path / "digests.json")
    st = f.stat()
    assert C._DIGESTS[(str(f.absolute()), st.st_size, st.st_mtime_ns)] == d


def test_swap_dir_replaces_a_folder_whole(tmp_path):
    from ultrabones.core import atomic

    final = tmp_path / "Labels"
    final.mkdir()
    (final / "1_label.png").write_bytes(b"old")
    (final / "2_label.png").write_bytes(b"old")
    new = atomic.new_dir_beside(final)
    (new / "2_label.png").write_bytes(b"new")
    atomic.swap_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["2_label.png"]
    assert (final / "2_label.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Labels"]
    assert atomic.write_text_if_changed(tmp_path / "d.txt", "a") is True
    assert atomic.write_text_if_changed(tmp_path / "d.txt", "a") is False


def test_summary_lookup_and_rules():
    metrics = {"02_labeling": {"discard_rate": 0.2, "label_error_mm": {"optimized": {"mean": 0.25}}}}
    assert summary.lookup(metrics, "02_labeling:label_error_mm.optimized.mean") == 0.25
    assert summary.lookup(metrics, "02_labeling:label_error_mm.initial.mean") is None
    assert summary.lookup(metrics, "09_nothing:x") is None
    row = summary.Row("discard", 0.187, "02_labeling:discard_rate", rule="abs", tol=0.05)
    assert summary.reproduced(row, 0.2) == "yes"
    assert summary.reproduced(row, 0.3) == "no"
    assert summary.reproduced(row, None) == "n/a"
    assert summary.reproduced(summary.Row("p", 0.001, "x:y", rule="below", tol=0.001), 0.0004) == "yes"
    table = summary.summary_table(metrics)
    assert len(table) == len(summary.ROWS)
    got = table.set_index("quantity").loc["frames discarded by validation (fraction)"]
    assert got["this run"] == 0.2 and got["reproduced"] == "yes" and got["source"] == "02_labeling.json: discard_rate"


def test_summary_sources_name_real_notebooks():
    for row in summary.ROWS:
        for ref in filter(None, (row.source, row.truth)):
            assert ref.split(":")[0] in NOTEBOOKS, ref


def test_committed_figures_have_a_maker():
    """Every file in figures/ was recorded by the notebook that made it (no orphans)."""
    if not FIGURES_DIR.is_dir():
        pytest.skip("no figures/ yet")
    assert summary.orphan_figures(FIGURES_DIR) == []
    manifest = json.loads((FIGURES_DIR / stage.MANIFEST).read_text()) if (FIGURES_DIR / stage.MANIFEST).is_file() else {}
    assert set(manifest.values()) <= set(NOTEBOOKS)
    missing = [f for f in manifest if not (FIGURES_DIR / f).is_file()]
    assert not missing, f"manifest lists files that are not in figures/: {missing}"
