"""A minimal progress bar on stderr (no extra dependency); silent when not a terminal unless forced."""

from __future__ import annotations

import sys
import time


class Progress:
    """``for x in Progress(iterable, desc)``; ``set(text)`` updates the trailing status."""

    def __init__(self, iterable, desc: str = "", total: int | None = None, enabled: bool | None = None, stream=None):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.status = ""
        self.n = 0
        self.start = time.perf_counter()

    def set(self, status: str):
        self.status = status

    def _draw(self, final=False):
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            filled = int(24 * self.n / self.total)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {self.n}/{self.total}"
        else:
            bar = f"{self.n}"
        end = "\n" if final else ""
        self.stream.write(f"\r{self.desc} {bar} {rate:.1f} it/s {self.status}".ljust(100) + end)
        self.stream.flush()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            self._draw()
        self._draw(final=True)
