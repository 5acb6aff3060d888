"""Parameter profiles: loading, merging and strict validation.

A profile (``params/<name>.yaml``) holds *common* keys at the top level, one
section per stage (``simulate``, ``calibration``, ...) and ``twin``, the keys only
the digital twin's code reads. ``params/default.yaml``
gives every key; another profile says ``extends: default`` (or another profile)
and lists only the keys whose values differ (:func:`resolve_profile_files`;
``python -m ultrabones params --profile hard --explain`` shows where each value
came from). A notebook receives the
common keys plus its own section's keys, flat, as papermill parameters, and, when its twin-only cells read
some (:data:`~ultrabones.core.schema.TWIN_KEYS`), those keys of the ``twin`` section as one dict parameter
``twin``; its ``parameters`` cell names exactly those keys (``tests/test_params.py`` checks).

Per-specimen overrides (``params/specimens/<id>.yaml``) hold sections only and
are merged over the profile for that specimen: notebooks receive them as
``specimen_overrides`` and call :func:`for_specimen`.

Every key is validated against :data:`SCHEMA`: an unknown key, a wrong type or
a value out of range raises :class:`~ultrabones.core.errors.ParamsError` naming the
file and the key. papermill only warns about unknown parameters, so this module
is the only guard.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import yaml

from ultrabones.core.errors import ParamsError
from ultrabones.core.paths import PARAMS_DIR
from ultrabones.core.schema import COMMON, MOVED_KEYS, NOTEBOOKS, PATH_KEYS, SCHEMA, TWIN_KEYS


def resolve_path(value: str | None, base: Path | str) -> str | None:
    """An absolute path for a user-given one: ``~`` expanded, a relative one joined to ``base``.

    Symbolic links are kept as given (``os.path.normpath``, not ``resolve``);
    None stays None.
    """
    if value is None:
        return None
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = Path(base) / p
    return os.path.normpath(str(p))


def resolve_paths(values: Mapping, base: Path | str, sections_only: bool = False) -> dict:
    """A copy of validated ``values`` with every key of :data:`PATH_KEYS` made absolute.

    Parameters
    ----------
    values : a validated profile (common keys and sections) or, with
        ``sections_only``, a specimen override (sections only, any subset).
    base : the directory relative paths are read from (the command's cwd).
    """
    out = copy.deepcopy(dict(values))
    for section, keys in PATH_KEYS.items():
        if section is None:
            if sections_only:
                continue
            target = out
        else:
            target = out.get(section)
            if not isinstance(target, dict):
                continue
        for k in keys:
            if k in target and isinstance(target[k], str):
                target[k] = resolve_path(target[k], base)
    return out


def profile_name(path: Path | str, params_dir: Path | str) -> str:
    """The build-folder name of a profile file.

    ``params/<name>.yaml`` gives ``<name>``; a file elsewhere gives
    ``<stem>-<8 hex digits of the SHA-256 of its absolute path>``, so that
    ``--profile /elsewhere/smoke.yaml`` never writes over ``build/smoke``
    (or over ``figures/`` for a foreign ``default.yaml``).
    """
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    if path.parent == Path(os.path.abspath(params_dir)):
        return path.stem
    return f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (``line`` is 1-based)."""

    def __init__(self, key: Any, line: int, first_line: int, mark):
        super().__init__(None, None, f"duplicate key {key!r} (first given on line {first_line})", mark)
        self.key, self.line, self.first_line = key, line, first_line


class StrictLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a key repeated within one mapping.

    PyYAML keeps the last of two equal keys silently; a profile with
    ``gamma_mm`` written twice in one section would run with whichever came
    last. Raises :class:`DuplicateKeyError` naming the key and both lines.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key], key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, where: str = "<string>") -> Any:
    """Parse YAML text with :class:`StrictLoader`.

    Raises
    ------
    ParamsError
        Naming ``where``, the line and the key of a duplicate key, or the
        parser's message for malformed YAML.
    """
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ParamsError(
            f"{where} line {exc.line}: duplicate key {exc.key!r} (first given on line {exc.first_line});"
            " each key may appear once per section"
        ) from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML: {exc}") from None


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing or malformed file or a duplicate key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    data = load_yaml_text(path.read_text(), str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


EXTENDS_KEY = "extends"


def profile_path(name: str, params_dir: Path, relative_to: Path | None = None) -> Path:
    """The file of a profile named ``name`` (``params/<name>.yaml``) or given as a path to a YAML file."""
    if name.endswith((".yaml", ".yml")):
        path = Path(os.path.expanduser(name))
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return path
    return Path(params_dir) / f"{name}.yaml"


def _merge_into(target: dict, values: Mapping, origins: dict, source: str) -> None:
    """Overlay one profile file's ``values`` on ``target``: sections key by key, common keys whole."""
    for key, value in values.items():
        if key in SCHEMA and value is None:
            continue  # an empty section: the base's stands
        if key in SCHEMA and isinstance(value, Mapping):
            section = target.setdefault(key, {})
            if not isinstance(section, dict):
                section = target[key] = {}
            for sub, v in value.items():
                section[sub] = copy.deepcopy(v)
                origins[f"{key}.{sub}"] = source
        else:
            target[key] = copy.deepcopy(value)
            origins[key] = source


def resolve_profile_files(path: Path | str, params_dir: Path | str) -> tuple[dict, dict[str, str], list[Path]]:
    """Read a profile and the chain of profiles it ``extends``, merged, before validation.

    A profile may start with ``extends: <name>`` (another profile of ``params_dir``, or a path to a YAML file,
    relative to the file that names it) and then give only the keys whose values differ: a section's keys are
    overlaid one by one on the base's section, a common key replaces the base's.

    Parameters
    ----------
    path : the profile's file.
    params_dir : the ``params/`` folder, where named bases are looked up.

    Returns
    -------
    values : the merged profile (not yet validated).
    origins : ``"<section>.<key>"`` or ``"<common key>"`` -> the file that gave its value.
    files : the chain's files, the base first.

    Raises
    ------
    ParamsError
        For a missing base, a cycle (naming the chain) or an ``extends`` that is not a string.
    """
    chain: list[Path] = []
    raw: list[dict] = []
    current: Path | None = Path(path)
    while current is not None:
        current = Path(os.path.abspath(current))
        if current in chain:
            names = " -> ".join(str(p) for p in [*chain, current])
            raise ParamsError(f"{chain[0]}: 'extends' makes a cycle: {names}")
        data = dict(read_yaml(current))
        base = data.pop(EXTENDS_KEY, None)
        _validate_partial(data, str(current))  # a bad key or value is named with the file that gives it
        chain.append(current)
        raw.append(data)
        if base is None:
            current = None
        elif not isinstance(base, str) or not base.strip():
            raise ParamsError(f"{current}: 'extends' must name a profile (e.g. extends: default), got {base!r}")
        else:
            current = profile_path(base.strip(), Path(params_dir), relative_to=current.parent)
            if not current.is_file():
                raise ParamsError(f"{chain[-1]}: extends {base!r}, but {current} does not exist")
    merged: dict = {}
    origins: dict[str, str] = {}
    for file, data in zip(reversed(chain), reversed(raw)):
        _merge_into(merged, data, origins, str(file))
    return merged, origins, list(reversed(chain))


def _validate_partial(data: Mapping, where: str) -> None:
    """Check one file of a profile chain: known keys, valid values, any subset of them."""
    for key, value in data.items():
        if key in SCHEMA:
            validate_section(key, value if value is not None else {}, where, partial=True)
        elif key in COMMON:
            COMMON[key].check(value, f"{where}: {key}")
        else:
            raise ParamsError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(COMMON) + sorted(SCHEMA))}, {EXTENDS_KEY})"
            )


def resolved_profile(name: str, params_dir: Path | str | None = None) -> dict:
    """A profile's validated values, its ``extends`` chain merged, paths as written (for tests and tools).

    Parameters
    ----------
    name : profile name (``params/<name>.yaml``) or a path to a YAML file.
    params_dir : the ``params/`` folder (default: the project's).
    """
    params_dir = PARAMS_DIR if params_dir is None else params_dir
    path = profile_path(name, Path(params_dir))
    merged, _, files = resolve_profile_files(path, params_dir)
    return validate_profile(merged, _chain_name(files))


def _chain_name(files: list[Path]) -> str:
    """``smoke.yaml`` for one file, ``/.../smoke.yaml (extends default.yaml)`` for a chain: where messages point."""
    top = str(files[-1])
    if len(files) == 1:
        return top
    return f"{top} (extends {' <- '.join(f.name for f in files[:-1])})"


def explain_profile(name: str, params_dir: Path | str) -> str:
    """Every key of a profile with its value and the file that gave it (``ultrabones params --explain``)."""
    path = profile_path(name, Path(params_dir))
    merged, origins, files = resolve_profile_files(path, params_dir)
    values = validate_profile(merged, _chain_name(files))
    lines = [f"# {path.name}: " + " <- ".join(f.name for f in reversed(files))]
    width = max(len(k) for k in origins)
    for key in list(COMMON) + [s for s in SCHEMA]:
        if key in SCHEMA:
            for sub in SCHEMA[key]:
                full = f"{key}.{sub}"
                lines.append(f"{full:<{width}}  {values[key][sub]!r}  [{Path(origins[full]).name}]")
        else:
            lines.append(f"{key:<{width}}  {values[key]!r}  [{Path(origins[key]).name}]")
    return "\n".join(lines)


def validate_section(section: str, values: Mapping, where: str, partial: bool = False) -> dict:
    """Validate one section's keys.

    Parameters
    ----------
    section : section name, a key of :data:`SCHEMA`.
    values : the section's mapping.
    where : file name used in messages.
    partial : allow missing keys (overrides).
    """
    schema = SCHEMA[section]
    if not isinstance(values, Mapping):
        raise ParamsError(f"{where}: section '{section}' must be a mapping")
    out = {}
    for key, value in values.items():
        if f"{section}.{key}" in MOVED_KEYS:
            raise ParamsError(f"{where}: '{section}.{key}' moved to {MOVED_KEYS[f'{section}.{key}']} (the twin "
                              "section holds what only the digital twin reads); rename it there")
        if key not in schema:
            raise ParamsError(
                f"{where}: unknown key '{section}.{key}' (known: {', '.join(sorted(schema)) or 'none'})"
            )
        out[key] = schema[key].check(value, f"{where}: {section}.{key}")
    if not partial:
        missing = sorted(set(schema) - set(out))
        if missing:
            raise ParamsError(f"{where}: section '{section}' lacks key(s) {', '.join(missing)}")
    return out


class SectionParams:
    """Base of a stage's parameters: a frozen dataclass with one typed field per key of its section ``SECTION``.

    Construction, and so ``dataclasses.replace``, validates every value (:func:`validate_section`); lists
    become tuples. :meth:`from_section` builds it from the profile's section, :meth:`for_specimen` applies a
    specimen's overrides, :meth:`as_dict` gives the section back as plain data (tuples as lists, in the fields'
    order): what cache keys and provenance hash.
    """

    SECTION: ClassVar[str]

    def __post_init__(self):
        for name, value in validate_section(self.SECTION, self.as_dict(), type(self).__name__).items():
            object.__setattr__(self, name, tuple(value) if isinstance(value, list) else value)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str | None = None):
        """From the profile's section, every key (e.g. ``params.collect(globals(), stem)``).

        Raises
        ------
        ParamsError
            Naming the key (``<section>.<key>``) of an unknown, missing or invalid value.
        """
        return cls(**validate_section(cls.SECTION, section, where or f"{cls.SECTION} section"))

    def for_specimen(self, specimen_overrides: Mapping | None, specimen: str):
        """These parameters with a specimen's overrides (``params/specimens/<id>.yaml``) applied, validated."""
        over = dict((specimen_overrides or {}).get(specimen, {}))
        return dataclasses.replace(self, **validate_section(self.SECTION, over, f"{specimen} overrides",
                                                            partial=True))

    def as_dict(self) -> dict[str, Any]:
        """The section as plain data (tuples as lists), in the fields' order."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}


def validate_profile(data: Mapping, where: str) -> dict:
    """Validate a whole profile: common keys and every section, nothing unknown."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in SCHEMA:
            out[key] = validate_section(key, value if value is not None else {}, where)
        elif key in COMMON:
            out[key] = COMMON[key].check(value, f"{where}: {key}")
        else:
            raise ParamsError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(COMMON) + sorted(SCHEMA))})"
            )
    missing = sorted((set(COMMON) | set(SCHEMA)) - set(out))
    if missing:
        raise ParamsError(f"{where}: missing key(s) {', '.join(missing)}")
    return out


#: The section read only by the digital twin's code (not set per specimen).
TWIN_SECTION = "twin"


def validate_override(data: Mapping, where: str) -> dict:
    """Validate a per-specimen override file: known sections, known keys, any subset."""
    out = {}
    for key, value in data.items():
        if key not in SCHEMA or key == TWIN_SECTION:
            raise ParamsError(
                f"{where}: unknown section '{key}' (a specimen file may set: "
                f"{', '.join(s for s in SCHEMA if s != TWIN_SECTION)})"
            )
        out[key] = validate_section(key, value or {}, where, partial=True)
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value`` (value read as YAML)."""
    if "=" not in text:
        raise ParamsError(f"-p {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not raw.strip():  # YAML reads an empty value as null, which would silently mean "no limit" for some keys
        raise ParamsError(f"-p {text!r}: empty value for '{key.strip()}'; give a value, or write "
                          f"{key.strip()}=null where null is meant")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


@dataclass
class Profile:
    """A validated profile and its per-specimen overrides."""

    name: str
    values: dict
    overrides: dict  # specimen id -> validated override sections
    source: Path
    specimen: str | None = None

    def notebook_parameters(self, stem: str) -> dict:
        """Common keys, this notebook's section, its per-specimen overrides and, for a notebook with twin-only
        cells, ``twin``: the keys of the ``twin`` section it reads (:data:`~ultrabones.core.schema.TWIN_KEYS`)."""
        section = NOTEBOOKS[stem]
        params = {k: copy.deepcopy(self.values[k]) for k in COMMON}
        params.update(copy.deepcopy(self.values[section]))
        if stem in TWIN_KEYS:
            params[TWIN_SECTION] = {k: copy.deepcopy(self.values[TWIN_SECTION][k]) for k in TWIN_KEYS[stem]}
        params["specimen"] = self.specimen
        params["specimen_overrides"] = {
            spec: copy.deepcopy(ov[section]) for spec, ov in self.overrides.items() if section in ov
        }
        return params


def load_profile(
    name: str,
    params_dir: Path,
    assignments: list[str] | None = None,
    specimen: str | None = None,
    section_hint: str | None = None,
    cwd: Path | str | None = None,
) -> Profile:
    """Load, validate and merge a profile.

    Parameters
    ----------
    name : profile name (``params/<name>.yaml``) or a path to a YAML file.
    params_dir : the ``params/`` folder.
    assignments : ``key=value`` overrides; ``section.key`` or, with
        ``section_hint``, a bare key of that section or a common key.
    specimen : process only this specimen (``make specimen``); it must be
        one of ``specimens`` when that list is given.
    section_hint : the section a bare key belongs to (a bare key of the ``twin`` section that the hinted section
        lacks goes to ``twin``).
    cwd : the directory where the command ran (default: the current one).
        Path-valued keys (:data:`PATH_KEYS`) given relative, in the profile,
        a specimen file or ``-p``, are read from here, and ``~`` expands.

    A profile file outside ``params_dir`` is named by :func:`profile_name`
    (``<stem>-<hash>``), so that it gets its own build folder.
    """
    params_dir = Path(params_dir)
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = profile_path(name, params_dir)
    merged, _, files = resolve_profile_files(path, params_dir)
    values = validate_profile(merged, _chain_name(files))
    for text in assignments or []:
        key, value = parse_assignment(text)
        if "." in key:
            section, sub = key.split(".", 1)
        elif key in COMMON:
            section, sub = None, key
        elif section_hint is not None:
            in_twin = key in SCHEMA[TWIN_SECTION] and key not in SCHEMA.get(section_hint, {})
            section, sub = (TWIN_SECTION if in_twin else section_hint), key
        else:
            raise ParamsError(f"-p {text}: give the key as section.key")
        if section is None:
            values[sub] = COMMON[sub].check(value, f"-p {key}")
        else:
            if section not in SCHEMA:
                raise ParamsError(f"-p {text}: unknown section '{section}'")
            values[section].update(validate_section(section, {sub: value}, "-p", partial=True))
    overrides = {}
    spec_dir = params_dir / "specimens"
    if spec_dir.is_dir():
        for f in sorted(spec_dir.glob("*.yaml")):
            overrides[f.stem] = validate_override(read_yaml(f), str(f))
    if specimen is not None and values["specimens"] is not None and specimen not in values["specimens"]:
        raise ParamsError(f"{path}: specimen {specimen!r} is not in specimens {values['specimens']}")
    values = resolve_paths(values, base)
    overrides = {k: resolve_paths(v, base, sections_only=True) for k, v in overrides.items()}
    return Profile(name=profile_name(path, params_dir), values=values, overrides=overrides, source=path,
                   specimen=specimen)


def for_specimen(section_params: Mapping, specimen_overrides: Mapping, specimen: str) -> dict:
    """A section's parameters for one specimen: the profile's, then its override file's."""
    out = dict(section_params)
    out.update(specimen_overrides.get(specimen, {}))
    return out


def collect(namespace: Mapping, stem: str) -> dict:
    """A notebook's section parameters gathered back from its namespace.

    Notebooks receive parameters as variables; ``collect(globals(), "02_labeling")``
    returns them as one validated dict to hand to the package.
    """
    section = NOTEBOOKS[stem]
    return validate_section(section, {k: namespace[k] for k in SCHEMA[section]}, f"notebook {stem}")
