"""The live progress line: env steps, steps per second, recent return, ETA."""
from __future__ import annotations

import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressLine:
    """A rich progress bar on a terminal; a plain line every ``interval`` seconds otherwise."""

    def __init__(self, total: int, start: int = 0, unit: str = "env steps", interval: float = 10.0,
                 enabled: bool = True):
        self.total, self.unit, self.interval = total, unit, interval
        self.start_value, self.start_time = start, time.perf_counter()
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

    def rate(self, value: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (value - self.start_value) / elapsed if elapsed > 0 else 0.0

    def update(self, value: int, recent_return: float | None) -> None:
        rate = self.rate(value)
        ret = "return    -   " if recent_return is None or math.isnan(recent_return) else f"return {recent_return:8.2f}"
        if self.progress is not None:
            self.progress.update(self.task, completed=value, rate=f"{rate:8.0f} steps/s", ret=ret)
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last_print >= self.interval or value >= self.total):
            self.last_print = now
            eta = max(0.0, self.total - value) / rate if rate > 0 else float("inf")
            eta_text = f"{eta / 60:5.1f} min" if math.isfinite(eta) else "   ?"
            print(f"[{value:>10,} / {self.total:,} {self.unit}] {rate:8.0f} steps/s  {ret}  ETA {eta_text}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
