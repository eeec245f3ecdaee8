"""Greedy decoding with the output kernel transposed once (as shipped) against
the kernel as stored, in one process, tutorial shapes, EOS banned (24 steps).

Run from the repository root: `python experiments/bench/greedy_layout_ab.py`.
Prints min and median ms of 7 calls each and whether tokens and attention are equal.
"""

import os
import statistics
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import flax_cases, torch_cases  # noqa: E402
from bench.harness import Shapes, call_times, make_batch  # noqa: E402
from flax_attn import greedy  # noqa: E402


def _min_median_ms(fn):
  times = call_times(fn, 7)
  return 1e3 * min(times), 1e3 * statistics.median(times)


def main():
  shapes = Shapes()
  models = torch_cases.build_models(shapes)
  batch_np = make_batch(shapes, 0)
  cfg, params = models.config, flax_cases.eos_banned(models.params, models.config)
  src, lengths = jax.numpy.asarray(batch_np["src"]), jax.numpy.asarray(batch_np["src_lengths"])
  run = lambda: jax.block_until_ready(greedy.greedy_decode(cfg, params, src, lengths, 24))
  new = run()
  print("transposed kernel (as shipped): min %.0f med %.0f ms" % _min_median_ms(run))
  # The kernel as stored: no transposed copy, and a fresh trace of the decoder.
  greedy.transposed_out_kernel = lambda p: None
  greedy._greedy = jax.jit(greedy._greedy.__wrapped__, static_argnames=("config", "max_len"))
  old = run()
  print("kernel as stored: min %.0f med %.0f ms" % _min_median_ms(run))
  print("tokens equal:", bool(np.array_equal(new.tokens, old.tokens)),
        "attention equal:", bool(np.array_equal(new.attention, old.attention)))


if __name__ == "__main__":
  main()
