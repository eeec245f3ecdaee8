"""Where a training run's wall time goes, phase by phase.

`Stopwatch` sums wall seconds per named phase (`with watch("eval"): ...`) and
per compiled bucket width; `summary()` adds the total since it was made and
what no phase covered, so the parts add up to the whole. Phases nest without
counting twice: time in an inner phase (or `add`ed inside one) is taken off
the phase around it.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Iterator


class Stopwatch:
  """Wall-clock seconds per phase of one process's run."""

  def __init__(self):
    self.start = time.perf_counter()
    self.seconds: dict[str, float] = collections.defaultdict(float)
    self.compile_by_width: dict[int, float] = collections.defaultdict(float)
    self._open: list[list] = []   # [phase, seconds spent in phases inside it]

  @contextlib.contextmanager
  def __call__(self, phase: str) -> Iterator[None]:
    t = time.perf_counter()
    self._open.append([phase, 0.0])
    try:
      yield
    finally:
      _, inner = self._open.pop()
      elapsed = time.perf_counter() - t
      self.seconds[phase] += elapsed - inner
      if self._open:
        self._open[-1][1] += elapsed

  def add(self, phase: str, seconds: float) -> None:
    """Counts `seconds` (measured by the caller) for `phase`."""
    self.seconds[phase] += seconds
    if self._open:
      self._open[-1][1] += seconds

  def summary(self) -> dict:
    """{phase: seconds, ..., "compile_by_width": {width: seconds}, "other": the
    rest, "total": since the stopwatch was made}, rounded to 0.01 s."""
    total = time.perf_counter() - self.start
    out = {k: round(v, 2) for k, v in self.seconds.items()}
    out["other"] = round(total - sum(self.seconds.values()), 2)
    out["total"] = round(total, 2)
    out["compile_by_width"] = {str(w): round(s, 2) for w, s in sorted(self.compile_by_width.items())}
    return out

  @staticmethod
  def describe(summary: dict) -> str:
    """One line for people: `time: tokenizers 1.2 s, ..., total 80.0 s`."""
    parts = [f"{k} {v:.1f} s" for k, v in summary.items()
             if k not in ("compile_by_width", "total", "other")]
    widths = ", ".join(f"{w}: {s:.1f}" for w, s in summary.get("compile_by_width", {}).items())
    compile_note = f" (train step per bucket width: {widths})" if widths else ""
    return (f"time: {', '.join(parts)}, other {summary['other']:.1f} s, "
            f"total {summary['total']:.1f} s{compile_note}")
