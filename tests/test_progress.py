"""The relay that shows a kernel's progress bars on the terminal while papermill runs a notebook."""

import io
import time

from ultrabones.pipeline.progress import ProgressRelay


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_bar_updates_become_throttled_lines_with_the_final_state():
    out, clock = io.StringIO(), Clock()
    relay = ProgressRelay(out, prefix="[02] ", min_interval_s=10, heartbeat_s=0, clock=clock)
    for i in range(0, 101):
        clock.t = i * 0.5  # one update every 0.5 s for 50 s
        relay.write(f"\rframes:  {i}%|{'#' * (i // 10):10s}| {i}/100 [00:{i // 2:02d}<00:10, 2.0it/s]")
    relay.close()
    lines = out.getvalue().splitlines()
    assert all(line.startswith("[02] frames:") for line in lines)
    assert 5 <= len(lines) <= 7  # one line per 10 s of a 50 s bar, plus the final 100/100
    assert "100/100" in lines[-1] and "0/100" in lines[0]


def test_plain_text_passes_at_once_and_pending_bars_flush_on_close():
    out, clock = io.StringIO(), Clock()
    relay = ProgressRelay(out, prefix="", min_interval_s=10, heartbeat_s=0, clock=clock)
    relay.write("lambda = 0.1\n")
    relay.write("\rlambda:  50%|#####     | 4/8 [00:02<00:02, 2it/s]")
    clock.t = 1.0
    relay.write("\rlambda:  62%|######    | 5/8 [00:03<00:02, 2it/s]\r")
    assert out.getvalue().splitlines() == ["lambda = 0.1", "lambda:  50%|#####     | 4/8 [00:02<00:02, 2it/s]"]
    relay.close()
    assert out.getvalue().splitlines()[-1].startswith("lambda:  62%")


def test_a_silent_stage_gets_a_heartbeat():
    out = io.StringIO()
    relay = ProgressRelay(out, prefix="[04] ", min_interval_s=10, heartbeat_s=0.2)
    time.sleep(1.0)  # the heartbeat thread checks every min(5 s, heartbeat) = 0.2 s
    relay.close()
    assert "[04] still running" in out.getvalue()
