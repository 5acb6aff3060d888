"""Parameter profiles: every key validated, errors name the file and the key."""

import shutil
from pathlib import Path

import pytest

from ultrabones.core import params as P
from ultrabones.core import schema
from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import NOTEBOOKS_DIR, PARAMS_DIR

PROFILES = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))  # every profile the project ships


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
    _edit(pdir / "smoke.yaml", "n_workers: 1", "n_workers: one")
    with pytest.raises(ParamsError, match=r"smoke.yaml: n_workers: expected an integer, got 'one'"):
        P.load_profile("smoke", pdir)


def test_a_bad_value_in_the_base_is_named_with_the_base_file(pdir):
    _edit(pdir / "default.yaml", "seed: 0", "seed: zero")
    with pytest.raises(ParamsError, match=r"default.yaml: seed: expected an integer, got 'zero'"):
        P.load_profile("smoke", pdir)


def test_out_of_range(pdir):
    text = (pdir / "smoke.yaml").read_text()
    import re

    (pdir / "smoke.yaml").write_text(re.sub(r"n_specimens: \d+", "n_specimens: 0", text))
    with pytest.raises(ParamsError, match=r"smoke.yaml: simulate.n_specimens: 0 is below the minimum 1"):
        P.load_profile("smoke", pdir)


def test_missing_key(pdir):
    _edit(pdir / "default.yaml", "n_workers: 2", "")
    with pytest.raises(ParamsError, match=r"default.yaml: missing key\(s\) n_workers"):
        P.load_profile("default", pdir)
    with pytest.raises(ParamsError, match=r"smoke.yaml \(extends default.yaml\): section 'labeling' lacks"):
        _edit(pdir / "default.yaml", "  gamma_mm: 0.3", "")
        P.load_profile("smoke", pdir)


def test_missing_profile(pdir):
    with pytest.raises(ParamsError, match="nope.yaml: parameter file not found"):
        P.load_profile("nope", pdir)


def test_bad_yaml(pdir):
    (pdir / "smoke.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="smoke.yaml: not valid YAML"):
        P.load_profile("smoke", pdir)


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(text))


def test_duplicate_key_in_a_section_names_file_line_and_key(pdir):
    """PyYAML keeps the last of two equal keys silently; the project refuses them."""
    f = pdir / "paper.yaml"
    _edit(f, "  popsize: ", "  popsize: 9\n  popsize: ")
    first = _line_of(f, "popsize:")
    with pytest.raises(ParamsError, match=rf"paper.yaml line {first + 1}: duplicate key 'popsize' "
                                          rf"\(first given on line {first}\)"):
        P.load_profile("real", pdir)


def test_duplicate_top_level_key_and_section(pdir):
    f = pdir / "smoke.yaml"
    f.write_text(f.read_text() + "\nn_workers: 7\n")
    with pytest.raises(ParamsError, match=r"smoke.yaml line \d+: duplicate key 'n_workers'"):
        P.load_profile("smoke", pdir)
    shutil.copy(PARAMS_DIR / "smoke.yaml", f)
    f.write_text(f.read_text() + "\nsimulate:\n  n_specimens: 2\n")
    with pytest.raises(ParamsError, match=r"smoke.yaml line \d+: duplicate key 'simulate'"):
        P.load_profile("smoke", pdir)


def test_duplicate_key_in_a_specimen_file(pdir):
    f = pdir / "specimens" / "specimen02.yaml"
    f.write_text("labeling:\n  gamma_mm: 0.3\n  bound_mm: 1.0\n  gamma_mm: 0.4\n")
    with pytest.raises(ParamsError, match=r"specimen02.yaml line 4: duplicate key 'gamma_mm' \(first given on line 2\)"):
        P.load_profile("smoke", pdir)


def test_same_key_in_different_sections_is_fine():
    assert P.load_yaml_text("a:\n  k: 1\nb:\n  k: 2\n") == {"a": {"k": 1}, "b": {"k": 2}}


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


# ----------------------------------------------------------------------------- the twin section


def test_notebooks_receive_their_twin_keys_as_one_dict():
    prof = P.load_profile("smoke", PARAMS_DIR)
    for stem in P.NOTEBOOKS:
        nbp = prof.notebook_parameters(stem)
        if stem not in schema.TWIN_KEYS:
            assert "twin" not in nbp, stem
            continue
        assert list(nbp["twin"]) == list(schema.TWIN_KEYS[stem]), stem
        assert nbp["twin"] == {k: prof.values["twin"][k] for k in schema.TWIN_KEYS[stem]}
        assert not set(nbp["twin"]) & set(P.SCHEMA[P.NOTEBOOKS[stem]]), stem  # the method's section never holds them
    assert prof.notebook_parameters("01_calibration")["twin"] == {"surface_samples": 5000}  # smoke.yaml's
    # every twin key is read by one notebook, every moved key names its new place
    assert sorted(k for keys in schema.TWIN_KEYS.values() for k in keys) == sorted(P.SCHEMA["twin"])
    assert schema.MOVED_KEYS["rating.rubric_visible_mm"] == "twin.rubric_visible_mm"
    assert schema.MOVED_KEYS["evaluation.annotator_sweep_contrasts"] == "twin.annotator_sweep_contrasts"


@pytest.mark.parametrize("old, value", [("rating.rubric_visible_mm", 0.4), ("labeling.compare_objectives_frames", 60),
                                        ("calibration.surface_samples", 5000),
                                        ("evaluation.annotator_sweep_quantiles", [0.0])])
def test_a_key_moved_to_twin_is_named_in_its_new_place(pdir, old, value):
    section, key = old.split(".")
    moved = rf"'{section}.{key}' moved to twin.{key}"
    with pytest.raises(ParamsError, match=rf"-p: {moved}"):
        P.load_profile("smoke", pdir, [f"{old}={value}"])
    (pdir / "old.yaml").write_text(f"extends: default\n{section}:\n  {key}: {value}\n")
    with pytest.raises(ParamsError, match=rf"old.yaml: {moved}"):
        P.load_profile("old", pdir)
    (pdir / "specimens" / "specimen02.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ParamsError, match=rf"specimen02.yaml: {moved}"):
        P.load_profile("smoke", pdir)


def test_twin_keys_are_set_in_the_twin_section_and_not_per_specimen(pdir):
    prof = P.load_profile("smoke", pdir, ["twin.compare_objectives_frames=60", "twin.rubric_visible_mm=0.4"])
    assert prof.values["twin"]["compare_objectives_frames"] == 60
    assert prof.notebook_parameters("02_labeling")["twin"]["compare_objectives_frames"] == 60
    assert prof.notebook_parameters("03_rating_statistics")["twin"]["rubric_visible_mm"] == 0.4
    # a bare key the stage's section lacks goes to twin (docs: -p compare_objectives_frames=N)
    prof = P.load_profile("smoke", pdir, ["compare_objectives_frames=7"], section_hint="labeling")
    assert prof.values["twin"]["compare_objectives_frames"] == 7
    with pytest.raises(ParamsError, match="twin.rubric_visible_mm: 1.5 is above the maximum"):
        P.load_profile("smoke", pdir, ["twin.rubric_visible_mm=1.5"])
    (pdir / "specimens" / "specimen02.yaml").write_text("twin:\n  surface_samples: 1000\n")
    with pytest.raises(ParamsError, match="specimen02.yaml: unknown section 'twin'"):
        P.load_profile("smoke", pdir)


def test_specimen_must_be_listed(pdir):
    _edit(pdir / "default.yaml", "specimens: null", "specimens: [specimen01]")
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


# ----------------------------------------------------------------------------- user-given paths


def test_relative_paths_resolve_from_the_command_directory_not_notebooks(pdir, tmp_path, monkeypatch):
    """papermill runs notebooks in notebooks/: a relative path must be made absolute before injection."""
    _edit(pdir / "default.yaml", "data_root: null", "data_root: ../shared/real_sweep")
    _edit(pdir / "default.yaml", "ratings_csv: null", "ratings_csv: ratings/my.csv")
    (pdir / "specimens" / "specimen02.yaml").write_text("evaluation:\n  checkpoint: models/x.ckpt\n")
    here = tmp_path / "work" / "repo"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    prof = P.load_profile("smoke", pdir, ["rating.ratings_key=key.csv"])
    assert prof.values["data_root"] == str(tmp_path / "work" / "shared" / "real_sweep")
    assert prof.values["rating"]["ratings_csv"] == str(here / "ratings" / "my.csv")
    assert prof.values["rating"]["ratings_key"] == str(here / "key.csv")
    assert prof.overrides["specimen02"]["evaluation"]["checkpoint"] == str(here / "models" / "x.ckpt")
    nbp = prof.notebook_parameters("03_rating_statistics")
    assert Path(nbp["data_root"]).is_absolute() and Path(nbp["ratings_csv"]).is_absolute()
    # an explicit base wins over the process's cwd
    prof = P.load_profile("smoke", pdir, cwd=tmp_path)
    assert prof.values["rating"]["ratings_csv"] == str(tmp_path / "ratings" / "my.csv")


def test_tilde_expands_and_absolute_and_null_paths_stay(pdir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _edit(pdir / "default.yaml", "data_root: null", "data_root: ~/datasets/ub")
    prof = P.load_profile("smoke", pdir, ["training.encoder_weights=/abs/w.pth"])
    assert prof.values["data_root"] == str(tmp_path / "home" / "datasets" / "ub")
    assert prof.values["training"]["encoder_weights"] == "/abs/w.pth"
    assert prof.values["rating"]["ratings_csv"] is None


def test_every_path_valued_key_is_resolved():
    """A new key naming a file or folder must join PATH_KEYS (read from the doc strings)."""
    import re

    listed = {(s, k) for s, keys in P.PATH_KEYS.items() for k in keys}
    for section, schema in [(None, P.COMMON)] + list(P.SCHEMA.items()):
        for key, spec in schema.items():
            if spec.kind == "str" and re.search(r"\b(file|root|csv|checkpoint|folder|path)\b", spec.doc, re.I):
                assert (section, key) in listed, f"{section}.{key} looks path-valued but is not in PATH_KEYS"
    for section, keys in P.PATH_KEYS.items():
        for k in keys:
            assert k in (P.COMMON if section is None else P.SCHEMA[section])


def test_profile_outside_params_gets_its_own_build_folder(pdir, tmp_path):
    from ultrabones.core.paths import Paths

    assert P.load_profile("smoke", pdir).name == "smoke"
    assert P.load_profile(str(pdir / "smoke.yaml"), pdir).name == "smoke"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(pdir / "smoke.yaml", elsewhere / "smoke.yaml")
    name = P.load_profile(str(elsewhere / "smoke.yaml"), pdir).name
    assert name.startswith("smoke-") and len(name) == len("smoke-") + 8
    assert Paths.for_profile(name).build_dir != Paths.for_profile("smoke").build_dir
    # stable for one file, different for another one of the same name
    assert P.load_profile(str(elsewhere / "smoke.yaml"), pdir).name == name
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(pdir / "smoke.yaml", other / "smoke.yaml")
    assert P.load_profile(str(other / "smoke.yaml"), pdir).name not in (name, "smoke")
    # a foreign default.yaml never writes into figures/
    shutil.copy(pdir / "default.yaml", elsewhere / "default.yaml")
    assert P.load_profile(str(elsewhere / "default.yaml"), pdir).name != "default"


# ------------------------------------------------------------------ profiles as differences


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_resolves_to_a_complete_valid_set(profile):
    values = P.resolved_profile(profile)
    assert set(values) == set(P.COMMON) | set(P.SCHEMA)
    for section, schema in P.SCHEMA.items():
        assert set(values[section]) == set(schema), section


def test_only_default_gives_every_key_and_the_others_only_differences():
    """A profile that extends another lists only keys whose values differ from its base's."""
    import yaml

    for f in sorted(PARAMS_DIR.glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        if f.stem == "default":
            assert "extends" not in data
            continue
        assert "extends" in data, f"{f.name} restates every key: say 'extends: default' and list the differences"
        base = P.resolved_profile(data.pop("extends"))
        for key, value in data.items():
            if key in P.SCHEMA:
                same = [k for k, v in value.items() if P.SCHEMA[key][k].check(v, "") == base[key][k]]
                assert not same, f"{f.name}: {key}.{same} repeat the base's values"
            else:
                assert P.COMMON[key].check(value, "") != base[key], f"{f.name}: {key} repeats the base's value"


def test_extends_overlays_section_keys_and_explain_names_the_file(pdir):
    (pdir / "mine.yaml").write_text("extends: smoke\nseed: 4\nlabeling:\n  gamma_mm: 0.4\n")
    prof = P.load_profile("mine", pdir)
    smoke = P.load_profile("smoke", pdir)
    assert prof.values["seed"] == 4 and prof.values["labeling"]["gamma_mm"] == 0.4
    assert prof.values["labeling"]["lambdas"] == smoke.values["labeling"]["lambdas"]
    assert prof.values["simulate"] == smoke.values["simulate"]
    text = P.explain_profile("mine", pdir)
    assert "# mine.yaml: mine.yaml <- smoke.yaml <- default.yaml" in text.splitlines()[0]
    line = {ln.split()[0]: ln for ln in text.splitlines()[1:]}
    assert line["labeling.gamma_mm"].endswith("[mine.yaml]")
    assert line["simulate.n_specimens"].endswith("[smoke.yaml]")
    assert line["labeling.bound_mm"].endswith("[default.yaml]")


def test_extends_errors_name_the_chain(pdir):
    (pdir / "a.yaml").write_text("extends: b\n")
    (pdir / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ParamsError, match=r"'extends' makes a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        P.load_profile("a", pdir)
    (pdir / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ParamsError, match=r"c.yaml: extends 'nowhere', but .*nowhere.yaml does not exist"):
        P.load_profile("c", pdir)
    (pdir / "d.yaml").write_text("extends: [default]\n")
    with pytest.raises(ParamsError, match=r"d.yaml: 'extends' must name a profile"):
        P.load_profile("d", pdir)


def test_makefile_stage_lists_are_the_packages():
    """The Makefile's stage lists are written out for make; they must equal the package's."""
    import re

    text = (PARAMS_DIR.parent / "Makefile").read_text()

    def listed(name):
        return re.search(rf"^{name}\s*:=\s*(.+)$", text, re.M).group(1).split()

    assert listed("STAGES") == list(P.NOTEBOOKS)
    assert listed("PER_SPECIMEN") == list(schema.PER_SPECIMEN)


def test_the_specimen_readme_example_is_a_valid_override(pdir):
    import re

    text = (PARAMS_DIR / "specimens" / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    (pdir / "specimens" / "specimen02.yaml").write_text(example)
    prof = P.load_profile("smoke", pdir)
    assert prof.overrides["specimen02"]["labeling"]["lambda_value"] == 10.0
