"""The live progress line: env steps, steps per second, recent return, ETA."""
from __future__ import annotations

import collections
import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressLine:
    """A rich progress bar on a terminal; a plain line every ``interval`` seconds otherwise.

    The rate (and so the ETA) is measured over the last ``window`` seconds, not since the
    start: a run's first steps (random actions before learning starts) are much faster than
    the rest, and a rate from the start would keep the ETA far too short for most of the run.
    """

    def __init__(self, total: int, start: int = 0, unit: str = "env steps", interval: float = 10.0,
                 enabled: bool = True, window: float = 120.0, rate_unit: str = "steps"):
        self.total, self.unit, self.interval, self.window = total, unit, interval, window
        self.rate_unit = rate_unit
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(time.perf_counter(), start)])
        self.last_print = 0.0
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.enabled = enabled
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]{task.completed:>10,.0f}[/] / {task.total:,.0f} " + unit), BarColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[ret]}"), TimeRemainingColumn(),
                console=self.console, transient=False)
            self.task = self.progress.add_task("train", total=total, completed=start, rate="", ret="")
            self.progress.start()

    def rate(self, value: int, now: float | None = None) -> float:
        """Steps per second over about the last ``window`` seconds (since the start while younger)."""
        now = time.perf_counter() if now is None else now
        samples = self.samples
        if now - samples[-1][0] >= 1.0:  # one sample a second at most, however often this is called
            samples.append((now, value))
        # the window starts at the newest sample that is at least ``window`` old
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, v0 = samples[0]
        return (value - v0) / (now - t0) if now > t0 else 0.0

    def update(self, value: int, recent_return: float | None) -> None:
        rate = self.rate(value)
        ret = "return    -   " if recent_return is None or math.isnan(recent_return) else f"return {recent_return:8.2f}"
        rate_text = f"{rate:8.0f} {self.rate_unit}/s" if rate >= 10 else f"{rate:8.2f} {self.rate_unit}/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=value, rate=rate_text, ret=ret)
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last_print >= self.interval or value >= self.total):
            self.last_print = now
            eta = max(0.0, self.total - value) / rate if rate > 0 else float("inf")
            eta_text = f"{eta / 60:5.1f} min" if math.isfinite(eta) else "   ?"
            print(f"[{value:>10,} / {self.total:,} {self.unit}] {rate_text}  {ret}  ETA {eta_text}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
