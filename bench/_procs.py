"""Peak memory of a process and everything it started (Ray's daemons and workers too),
sampled from /proc: no dependency beyond the standard library (Linux only)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, now."""
    tree = _children()
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):  # the process ended meanwhile
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
        todo.extend(tree.get(current, []))
    return total


class PeakSampler:
    """Samples :func:`tree_rss_bytes` every ``every_s`` seconds in a thread; ``peak`` is the
    highest sum seen (a lower bound of the true peak, which can fall between samples)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
