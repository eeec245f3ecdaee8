"""What one library's step does to the other's next step, in one process.

Runs the flax_attn and the hoisted PyTorch train steps in a fixed sequence
(`order`, e.g. "FFFTFFTTT": F flax_attn, T torch_hoisted, s a 2 s sleep)
and reports each call's time, so that a step right after the other library's
can be set beside one right after its own. This is why `harness.measure`
times each implementation in a block of back-to-back calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from bench import flax_cases, torch_cases
from bench.harness import Shapes, make_batch


def run_sequence(shapes: Shapes, order: str, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Times the calls in `order` after one untimed call of each; returns
  `{"calls": [(name, ms, previous)], "summary": {...}}` where `previous` is
  the step that ran just before (None after a sleep) and the summary gives the
  median ms of each library's steps after its own step and after the other's."""
  log = log or (lambda msg: None)
  if set(order) - set("FTs"):
    raise ValueError(f"order may hold only F, T and s, got {order!r}")
  torch_cases.set_threads()
  models = torch_cases.build_models(shapes, seed)
  batch_np = make_batch(shapes, seed)
  cases = {"F": flax_cases.train_case(models.config, models.params, batch_np, shapes, seed),
           "T": torch_cases.train_case(models, "torch_hoisted", batch_np, shapes)}
  for c in cases.values():
    c.fn()
  calls, previous = [], None
  for name in order:
    if name == "s":
      time.sleep(2.0)
      previous = None
      continue
    ms = 1e3 * cases[name].timed_call()
    calls.append((name, ms, previous))
    log(f"{name} after {previous or 'sleep'}: {ms:.0f} ms")
    previous = name
  summary = {}
  for name, label in (("F", "flax_attn"), ("T", "torch_hoisted")):
    for after in ("own", "other"):
      times = [ms for n, ms, p in calls
               if n == name and p is not None and (p == name) == (after == "own")]
      if times:
        summary[f"{label} after {after} step, median ms"] = statistics.median(times)
  return {"calls": calls, "summary": summary}
