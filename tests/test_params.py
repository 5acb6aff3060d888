"""Parameter profiles: every key validated, errors name the file and the key."""

import shutil
from pathlib import Path

import pytest

from ultrabones.core import params as P
from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import NOTEBOOKS_DIR, PARAMS_DIR

PROFILES = ["default", "smoke", "paper"]


@pytest.fixture
def pdir(tmp_path):
    d = tmp_path / "params"
    shutil.copytree(PARAMS_DIR, d)
    return d


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate(profile):
    prof = P.load_profile(profile, PARAMS_DIR)
    assert set(prof.values) == set(P.COMMON) | set(P.SCHEMA)
    for section, schema in P.SCHEMA.items():
        assert set(prof.values[section]) == set(schema), section


def test_every_key_is_documented():
    for section, schema in list(P.SCHEMA.items()) + [("common", P.COMMON)]:
        for key, spec in schema.items():
            assert spec.doc, f"{section}.{key} has no doc"


def test_unknown_top_level_key(pdir):
    (pdir / "smoke.yaml").write_text((pdir / "smoke.yaml").read_text() + "\nsede: 3\n")
    with pytest.raises(ParamsError, match=r"smoke.yaml: unknown key 'sede'"):
        P.load_profile("smoke", pdir)


def test_unknown_section_key(pdir):
    _edit(pdir / "smoke.yaml", "simulate:\n", "simulate:\n  n_specimen: 3\n")
    with pytest.raises(ParamsError, match=r"smoke.yaml: unknown key 'simulate.n_specimen'"):
        P.load_profile("smoke", pdir)


def test_wrong_type(pdir):
    _edit(pdir / "smoke.yaml", "seed: 0", "seed: zero")
    with pytest.raises(ParamsError, match=r"smoke.yaml: seed: expected an integer, got 'zero'"):
        P.load_profile("smoke", pdir)


def test_out_of_range(pdir):
    text = (pdir / "smoke.yaml").read_text()
    import re

    (pdir / "smoke.yaml").write_text(re.sub(r"n_specimens: \d+", "n_specimens: 0", text))
    with pytest.raises(ParamsError, match=r"smoke.yaml: simulate.n_specimens: 0 is below the minimum 1"):
        P.load_profile("smoke", pdir)


def test_missing_key(pdir):
    _edit(pdir / "smoke.yaml", "n_workers: 1\n", "")
    with pytest.raises(ParamsError, match=r"smoke.yaml: missing key\(s\) n_workers"):
        P.load_profile("smoke", pdir)


def test_missing_profile(pdir):
    with pytest.raises(ParamsError, match="nope.yaml: parameter file not found"):
        P.load_profile("nope", pdir)


def test_bad_yaml(pdir):
    (pdir / "smoke.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="smoke.yaml: not valid YAML"):
        P.load_profile("smoke", pdir)


def test_command_line_overrides(pdir):
    prof = P.load_profile("smoke", pdir, ["seed=5", "simulate.n_specimens=2"])
    assert prof.values["seed"] == 5 and prof.values["simulate"]["n_specimens"] == 2
    prof = P.load_profile("smoke", pdir, ["n_specimens=4"], section_hint="simulate")
    assert prof.values["simulate"]["n_specimens"] == 4
    with pytest.raises(ParamsError, match=r"-p: simulate.n_specimens: expected an integer, got 'x'"):
        P.load_profile("smoke", pdir, ["simulate.n_specimens=x"])
    with pytest.raises(ParamsError, match="unknown key 'simulate.nope'"):
        P.load_profile("smoke", pdir, ["simulate.nope=1"])
    with pytest.raises(ParamsError, match="give the key as section.key"):
        P.load_profile("smoke", pdir, ["nope=1"])


def test_specimen_override_file(pdir):
    (pdir / "specimens" / "specimen02.yaml").write_text("simulate:\n  n_specimens: 2\n")
    prof = P.load_profile("smoke", pdir)
    assert prof.overrides == {"specimen02": {"simulate": {"n_specimens": 2}}}
    nbp = prof.notebook_parameters("00_simulate")
    assert nbp["specimen_overrides"] == {"specimen02": {"n_specimens": 2}}
    merged = P.for_specimen({"n_specimens": 3}, nbp["specimen_overrides"], "specimen02")
    assert merged == {"n_specimens": 2}
    assert P.for_specimen({"n_specimens": 3}, nbp["specimen_overrides"], "specimen01") == {"n_specimens": 3}


def test_specimen_override_unknown_section_and_key(pdir):
    f = pdir / "specimens" / "specimen02.yaml"
    f.write_text("labelling:\n  gamma: 1\n")
    with pytest.raises(ParamsError, match=r"specimen02.yaml: unknown section 'labelling'"):
        P.load_profile("smoke", pdir)
    f.write_text("simulate:\n  n_specimenz: 1\n")
    with pytest.raises(ParamsError, match=r"specimen02.yaml: unknown key 'simulate.n_specimenz'"):
        P.load_profile("smoke", pdir)


def test_specimen_must_be_listed(pdir):
    _edit(pdir / "smoke.yaml", "specimens: null", "specimens: [specimen01]")
    with pytest.raises(ParamsError, match="specimen 'specimen05' is not in specimens"):
        P.load_profile("smoke", pdir, specimen="specimen05")


@pytest.mark.parametrize("stem", list(P.NOTEBOOKS))
def test_notebook_parameters_cell_matches_what_it_receives(stem):
    """papermill only warns about unknown parameters: the project checks the names itself."""
    from ultrabones.pipeline.runner import parameter_names, stage_parameters

    nb = NOTEBOOKS_DIR / f"{stem}.ipynb"
    assert nb.is_file(), f"{nb} missing"
    for profile in PROFILES:
        given, _ = stage_parameters(stem, profile)
        assert sorted(parameter_names(nb)) == sorted(given), (stem, profile)
