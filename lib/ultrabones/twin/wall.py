"""The truth wall at run time: an audit hook that stops the method from opening the twin's truth.

``tests/test_architecture.py`` checks the source: no method module imports ``ultrabones.twin`` or names the
truth folder. That check is lexical; ``importlib.import_module``, ``__import__``, a path built from
``'tr' + 'uth'``, a glob over the twin folder or a metrics JSON written under the truth folder all pass it.
This module checks what happens instead: the runner starts the kernel of every method stage (01-07) with
:func:`install` in place (``sys.addaudithook``), and from then on every ``open`` of a file (and every
listing of a folder) under the twin's ``truth/`` folder is judged by who asked for it.

The rule, walking the calling frames from the ``open`` outwards:

- frames of libraries (the standard library, site-packages, frozen import machinery) and of
  ``ultrabones.core`` (the I/O helpers every layer uses) are passed over: they open on behalf of a caller;
- the walk stops at the notebook's own cell (``__main__``) or the pipeline (``ultrabones.pipeline``), or at
  the end of the stack (a thread or a worker process);
- the outermost of the other frames, the code the cell called (the *calling module*), must be
  ``ultrabones.twin``: a measurement cell calling the twin, which may itself call method functions to score
  what it read. Anything else is refused: method code, a throwaway module, a cell opening the file itself,
  and method code that reaches the truth by calling a twin reader (imported through ``importlib``, or a
  callable a cell handed over), since the outermost frame is then the method's.

A refused open raises :class:`~ultrabones.core.errors.TruthWallError` naming the file and the calling
module (with its file and line). Audit hooks cannot be removed, so the hook is installed only in processes
that run method stages: the runner names the twin folders in the environment variable :data:`ENV`
(``ultrabones.TRUTH_WALL_ENV``) and starts the kernel with ``__import__('ultrabones')``, which installs the hook
before the first cell (:func:`install_from_env`); worker processes (Dask, multiprocessing) inherit the variable
and are walled as soon as they import ``ultrabones``, which every task of the method does. It is a guard
against mistakes and lexical evasions, not a sandbox: code that starts another interpreter that never imports
``ultrabones``, or that edits this module's state, is not stopped.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterable

from ultrabones import TRUTH_WALL_ENV
from ultrabones.core.errors import TruthWallError
from ultrabones.twin.layout import TRUTH

#: The environment variable that carries the twin folders whose ``truth/`` is walled to child processes.
ENV = TRUTH_WALL_ENV

#: Audit events judged, and the argument that holds the path.
EVENTS = {"open": 0, "os.listdir": 0, "os.scandir": 0}

#: Module prefixes: the twin, the helpers passed over, the callers allowed to ask the twin to measure.
TWIN = "ultrabones.twin"
PASS_OVER = ("ultrabones.core",)
ORCHESTRATORS = ("__main__", "ultrabones.pipeline")

_LIBRARY_DIRS = tuple(sorted({os.path.realpath(p) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib")
                              if (p := sysconfig.get_paths().get(k))}))
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))
_walled: tuple[str, ...] = ()  # realpaths of the walled folders, each ending in os.sep
_installed = False


def _is(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _library(module: str, filename: str) -> bool:
    """A frame of the standard library, an installed third-party package or frozen import machinery."""
    if module.startswith("ultrabones.") or module in ("ultrabones", "__main__"):
        return False
    if filename.startswith("<frozen") or module.split(".", 1)[0] in _STDLIB:
        return True
    real = os.path.realpath(filename) if filename and not filename.startswith("<") else ""
    return bool(real) and real.startswith(_LIBRARY_DIRS)


def walled_path(path) -> str | None:
    """The real path of ``path`` when it lies under a walled folder, else None (file descriptors: None)."""
    if not _walled or isinstance(path, int) or path is None:
        return None
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None
    return real if (real + os.sep).startswith(_walled) else None


def verdict(frame) -> str | None:
    """Why the code on ``frame``'s stack may not open a truth file, or None when it may.

    Walks outwards from ``frame`` to the notebook's cell (``__main__``) or the pipeline, or to the end of the
    stack (a thread or worker), passing over library and ``ultrabones.core`` frames. The open is allowed when
    the outermost of the other frames, the one the cell called, is ``ultrabones.twin`` code: the twin measuring
    (it may call method functions to score, handing them what it read).

    Parameters
    ----------
    frame : the innermost frame that asked (the frame calling ``open``).

    Returns
    -------
    None, or the sentence naming the calling module with its file and line (and the module that opened the
    file, when another one).
    """
    chain = []  # the code frames met, innermost first: (module, "module (file:line)")
    while frame is not None:
        module = frame.f_globals.get("__name__") or "?"
        filename = frame.f_code.co_filename
        if _is(module, ORCHESTRATORS):
            break
        if not (module == __name__ or _is(module, PASS_OVER) or _library(module, filename)):
            chain.append((module, f"{module} ({filename}:{frame.f_lineno})"))
        frame = frame.f_back
    if not chain:
        if frame is None:
            return "opened with no calling module on its stack"
        where = f"{frame.f_globals.get('__name__')} ({frame.f_code.co_filename}:{frame.f_lineno})"
        return f"opened by {where}, which is outside {TWIN}"
    caller = chain[-1]
    if _is(caller[0], (TWIN,)):
        return None
    inner = []
    for module, _ in reversed(chain[:-1]):  # outer to inner, each module once
        if module not in inner:
            inner.append(module)
    via = f" through {' -> '.join(inner)} ({chain[0][1].split(' (', 1)[1]}" if inner else ""
    return f"opened by {caller[1]}{via}, which is outside {TWIN}"


def _hook(event: str, args: tuple) -> None:
    if event not in EVENTS or not _walled:
        return
    real = walled_path(args[EVENTS[event]])
    if real is None:
        return
    why = verdict(sys._getframe(1))
    if why is not None:
        why = why if event == "open" else why.replace("opened", "listed", 1)
        raise TruthWallError(
            f"truth wall: {real} is the twin's truth, {why}. The method never reads the "
            "truth; measure against it in a notebook cell that calls ultrabones.twin.measure (docs/truthwall.md)")


def install(folders: Iterable[Path | str]) -> tuple[str, ...]:
    """Wall off ``folders`` (the twin's ``truth/`` folders) in this process, for good.

    The hook is added once per process (audit hooks cannot be removed); later calls add folders.
    ``folders`` need not exist yet. Returns the walled folders' real paths.
    """
    global _walled, _installed
    new = {os.path.realpath(os.fspath(f)) + os.sep for f in folders}
    _walled = tuple(sorted(set(_walled) | new))
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    return walled_folders()


def walled_folders() -> tuple[str, ...]:
    """The folders walled in this process (real paths, without the trailing separator)."""
    return tuple(w[:-1] for w in _walled)


def install_from_env(environ=os.environ) -> tuple[str, ...]:
    """:func:`install` the ``truth/`` of each twin folder named by :data:`ENV`, if set (``import ultrabones``
    calls this; the runner sets it and starts the kernel with ``__import__('ultrabones')``)."""
    twins = [f for f in environ.get(ENV, "").split(os.pathsep) if f]
    return install(Path(t) / TRUTH for t in twins) if twins else walled_folders()
