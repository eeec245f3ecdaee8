"""Stopwatch: phases add up to the total, nested phases are not counted twice."""

import time

from flax_attn.stopwatch import Stopwatch


def test_nested_phases_are_taken_off_the_outer_one():
  w = Stopwatch()
  with w("setup"):
    time.sleep(0.05)
    with w("tokenizers"):
      time.sleep(0.10)
    t = time.perf_counter()
    time.sleep(0.08)
    w.add("compile", time.perf_counter() - t)   # measured by the caller inside "setup"
  s = w.summary()
  assert 0.04 <= s["setup"] < 0.10          # its own 0.05 s only
  assert 0.09 <= s["tokenizers"] < 0.2 and 0.07 <= s["compile"] < 0.15
  # "other" is what no phase covered; the parts add up to the total.
  parts = sum(v for k, v in s.items() if k not in ("total", "compile_by_width"))
  assert abs(parts - s["total"]) < 0.05


def test_describe_names_every_phase_and_the_widths():
  w = Stopwatch()
  w.add("eval", 2.0)
  w.compile_by_width[16] += 1.5
  line = Stopwatch.describe(w.summary())
  assert line.startswith("time: eval 2.0 s") and "16: 1.5" in line and "total" in line
