"""Progress a person can see while papermill runs a notebook.

Papermill keeps a kernel's output in the executed notebook; :class:`ProgressRelay` receives the
kernel's stderr as it arrives (papermill's ``stderr_file``) and writes it to the terminal as
lines: a tqdm bar's carriage-return updates become one line every ``min_interval_s`` seconds
(frames done out of total, rate, ETA) plus its final state, other text passes through at once,
and when nothing has been said for ``heartbeat_s`` seconds a heartbeat line says the stage is
still running. A stage that runs longer than a minute is therefore never silent.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable, TextIO

#: A tqdm line: ``desc: 40%|####      | 4/10 [00:02<00:03, 1.9it/s]``.
_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+")
_DONE = re.compile(r"(\d+)/(\1)\b")


class ProgressRelay:
    """A file-like sink that relays a kernel's stderr to ``out`` as throttled lines.

    Parameters
    ----------
    out : where lines go (the terminal's stderr).
    prefix : put before every line, e.g. ``"[02_labeling] "``.
    min_interval_s : at most one line per this many seconds for a progress bar (s).
    heartbeat_s : after this many seconds of silence, a "still running" line (s); 0 disables it.
    clock : a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, out: TextIO, prefix: str = "", min_interval_s: float = 10.0, heartbeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.out, self.prefix = out, prefix
        self.min_interval, self.heartbeat = float(min_interval_s), float(heartbeat_s)
        self.clock = clock
        self.start = self.last = clock()
        self._bar_last: dict[str, float] = {}
        self._pending: dict[str, str] = {}
        self._buf = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()

    # -- file protocol used by papermill -------------------------------------------------------
    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            parts = re.split(r"[\r\n]", self._buf)
            self._buf = parts.pop()  # an unfinished segment waits for its end
            for seg in parts:
                self._segment(seg)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        """Emit what is pending (each bar's last state) and stop the heartbeat."""
        self._stop.set()
        with self._lock:
            if self._buf.strip():
                self._segment(self._buf)
            self._buf = ""
            for key, seg in list(self._pending.items()):
                self._emit(seg)
            self._pending.clear()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # -- internals ------------------------------------------------------------------------------
    def _segment(self, seg: str) -> None:
        seg = seg.strip()
        if not seg:
            return
        if _BAR.search(seg):
            key = seg.split(":", 1)[0] if ":" in seg.split("|", 1)[0] else ""
            now = self.clock()
            finished = bool(_DONE.search(seg.split("|", 2)[-1]))
            if finished or now - self._bar_last.get(key, -1e18) >= self.min_interval:
                self._bar_last[key] = now
                self._pending.pop(key, None)
                self._emit(seg)
            else:
                self._pending[key] = seg
        else:
            self._emit(seg)

    def _emit(self, line: str) -> None:
        self.out.write(f"{self.prefix}{line}\n")
        self.out.flush()
        self.last = self.clock()

    def _beat(self) -> None:
        while not self._stop.wait(min(5.0, self.heartbeat)):
            with self._lock:
                if self.clock() - self.last >= self.heartbeat:
                    pending = " | last: " + next(reversed(self._pending.values())) if self._pending else ""
                    self._emit(f"still running ({self.clock() - self.start:.0f} s){pending}")
