"""A CPU load the test creates itself: busy Python loops in a process group of their own,
each bounded in time (it ends by itself even if the test process is killed), stopped when
the block ends. `CpuLoad(per_core=4)` on 2 cores keeps 8 loops running: a load average of
8-10 from this alone, what these machines see when several engineers run suites at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

LOOP = ("import time\n"
        "end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end:\n"
        "    sum(range(1000))\n")


class CpuLoad:
    def __init__(self, per_core: int = 4, seconds: float = 240):
        self.count = per_core * (os.cpu_count() or 1)
        self.seconds = seconds
        self.group: subprocess.Popen | None = None
        self.started = 0.0

    def __enter__(self) -> "CpuLoad":
        # one parent in a session of its own holds the loops: killing its group stops them all
        code = ("import subprocess, sys\n"
                f"loops = [subprocess.Popen([sys.executable, '-c', {LOOP.format(seconds=self.seconds)!r}])"
                f" for _ in range({self.count})]\n"
                "print('loaded', flush=True)\n"
                "for p in loops:\n    p.wait()\n")
        self.group = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      text=True, start_new_session=True)
        assert self.group.stdout.readline().strip() == "loaded"
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self.group is not None:
            try:
                os.killpg(self.group.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.group.wait()
            self.group.stdout.close()
            self.group = None

    @staticmethod
    def load_average() -> float:
        try:
            return os.getloadavg()[0]
        except OSError:
            return float("nan")
