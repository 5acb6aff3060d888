"""Command line: ``python -m ultrabones run NOTEBOOK --profile P [--seed N] [--specimen S] [-p key=value ...]``.

``--seed N`` runs the profile with master seed N into its own folders
(``build/<profile>-seed<N>/``, ``data/twin/<profile>-seed<N>/``).

Other verbs: ``check`` validates a profile and the specimen files, ``params`` prints a profile
(``--explain``: with the file each value came from; ``--files``: its ``extends`` chain),
``specimens`` lists a profile's specimens, ``stages`` lists the notebooks,
``inputs-digest`` writes the input dataset's path and content digest for ``make``,
``convert SRC DST`` converts a dataset between layout A and PLUS sequence files
(layout C), ``export-slicer`` writes a run's results for 3D Slicer (docs/slicer.md),
``timings`` prints the stage table of ``build/<profile>/timings.json``.
Errors of the package's own types print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ultrabones.core import atomic, timings
from ultrabones.core.cache import inputs_digest
from ultrabones.core.errors import UltrabonesError
from ultrabones.core.params import explain_profile, load_profile, profile_path, resolve_profile_files, resolved_profile
from ultrabones.core.paths import PARAMS_DIR, Paths, build_root, specimen_names
from ultrabones.core.schema import NOTEBOOKS, PER_SPECIMEN
from ultrabones.pipeline import runner
from ultrabones.pipeline.convert import convert
from ultrabones.pipeline.slicer import export_run
from ultrabones.pipeline.validation import collect_validation


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ultrabones", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="execute one numbered notebook with papermill")
    run.add_argument("notebook", help="'02', '02_labeling' or a path to a notebook")
    run.add_argument("--profile", default="default", help="params/<profile>.yaml (default: default)")
    run.add_argument("--seed", type=int, default=None,
                     help="another master seed; the run goes to build/<profile>-seed<N>/ and data/twin/<profile>-seed<N>/")
    run.add_argument("--specimen", default=None, help="run for this specimen only")
    run.add_argument("-p", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter (section.key=value, or key=value of this notebook's section)")
    run.add_argument("--stamp", default=None, help="file written only on success (for make)")
    run.add_argument("--no-progress", action="store_true", help="hide papermill's cell progress bar")
    chk = sub.add_parser("check", help="validate a profile and params/specimens/*.yaml")
    chk.add_argument("--profile", default="default")
    spc = sub.add_parser("specimens", help="list the specimens a profile runs on")
    spc.add_argument("--profile", default="default")
    prm = sub.add_parser("params", help="print a profile's parameters; --explain: with the file each came from")
    prm.add_argument("--profile", default="default")
    prm.add_argument("--explain", action="store_true", help="name the file (in the extends chain) of each value")
    prm.add_argument("--files", action="store_true", help="list the profile's files, base first (for make)")
    col = sub.add_parser("collect-validation",
                         help="copy seed builds' metrics of stages 00-02 into a committed folder (make validate)")
    col.add_argument("--profile", default="default")
    col.add_argument("--seeds", type=int, nargs="+", required=True)
    col.add_argument("--out", required=True, help="e.g. figures/validation")
    sub.add_parser("stages", help="list the numbered notebooks and their sections")
    dig = sub.add_parser("inputs-digest", help="write the input dataset's path and content digest (for make)")
    dig.add_argument("--profile", default="default")
    dig.add_argument("--seed", type=int, default=None, help="as for run")
    dig.add_argument("-p", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter (data_root=..., derived_root=...)")
    dig.add_argument("--out", required=True, help="the digest file; rewritten only when its content changes")
    cnv = sub.add_parser("convert", help="layout C (PLUS sequence files) -> layout A, or layout A/B -> layout C")
    cnv.add_argument("src", help="the dataset to convert (never written)")
    cnv.add_argument("dst", help="a new, empty folder")
    cnv.add_argument("--format", default=".igs.mha", choices=[".igs.mha", ".seq.mha", ".mha", ".mhd", ".seq.nrrd"],
                     help="sequence-file format when writing layout C (default .igs.mha)")
    cnv.add_argument("--compress", action="store_true", help="zlib-compress the pixel data (MetaImage)")
    exp = sub.add_parser("export-slicer", help="a run's labels, poses and surfaces as files 3D Slicer opens")
    exp.add_argument("--profile", default="default")
    exp.add_argument("--seed", type=int, default=None, help="as for run")
    exp.add_argument("-p", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter (data_root=..., derived_root=...)")
    exp.add_argument("--specimen", action="append", default=None, help="only this specimen (repeatable)")
    exp.add_argument("--out", required=True, help="the export folder")
    tim = sub.add_parser("timings", help="print the stage table of build/<profile>/timings.json")
    tim.add_argument("--profile", default="default")
    tim.add_argument("--seed", type=int, default=None, help="as for run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "run":
            runner.run_stage(args.notebook, args.profile, args.specimen, args.assignments, args.stamp,
                             progress=not args.no_progress, seed=args.seed)
        elif args.verb == "check":
            prof = load_profile(args.profile, PARAMS_DIR)
            print(f"{prof.source}: ok ({len(prof.overrides)} specimen override file(s))")
        elif args.verb == "params":
            if args.files:
                _, _, files = resolve_profile_files(profile_path(args.profile, PARAMS_DIR), PARAMS_DIR)
                print(" ".join(str(f) for f in files))
            elif args.explain:
                print(explain_profile(args.profile, PARAMS_DIR))
            else:
                print(yaml.safe_dump(resolved_profile(args.profile, PARAMS_DIR), sort_keys=False), end="")
        elif args.verb == "collect-validation":
            rec = collect_validation(build_root(), args.profile, args.seeds, args.out)
            print(f"{args.out}: seeds {', '.join(sorted(rec['seeds'], key=int))} collected")
        elif args.verb == "specimens":
            prof = load_profile(args.profile, PARAMS_DIR)
            print("\n".join(specimen_names(prof.values)))
        elif args.verb == "inputs-digest":
            prof = runner.seeded_profile(args.profile, args.assignments, args.seed)
            paths = Paths.for_profile(prof.name, prof.values["data_root"], prof.values.get("derived_root"))
            text = inputs_digest(paths, store=paths.cache("digests") / "inputs.json")
            atomic.write_text_if_changed(Path(args.out), text)
        elif args.verb == "convert":
            out = convert(args.src, args.dst, args.format, args.compress)
            print(f"{args.dst}: {len(out)} record(s) written")
        elif args.verb == "export-slicer":
            prof = runner.seeded_profile(args.profile, args.assignments, args.seed)
            paths = Paths.for_profile(prof.name, prof.values["data_root"], prof.values.get("derived_root"))
            out = export_run(paths, args.out, args.specimen)
            print(f"{args.out}: {len(out)} file(s) written")
        elif args.verb == "timings":
            folder = build_root() / runner.seeded_name(args.profile, args.seed)
            data = timings.read(folder)
            if not data:
                print(f"no timings in {timings.timings_path(folder)} (run a stage first)", file=sys.stderr)
                return 1
            order = list(NOTEBOOKS) + sorted(k for k in data if k not in NOTEBOOKS)
            print(f"{timings.timings_path(folder)}:")
            print(timings.table(data, order))
        elif args.verb == "stages":
            for stem, section in NOTEBOOKS.items():
                print(f"{stem:24s} {section:15s} {'per specimen' if stem in PER_SPECIMEN else ''}")
    except UltrabonesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
