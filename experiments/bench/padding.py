"""Padding cost of the length buckets on Multi30k: `bucket_widths` (the widths
that pad to the fewest tokens) against the length quantiles it replaced.

  python experiments/bench/padding.py [--data_dir ../shared/data/multi30k]

For the `multi30k` and `multi30k_tutorial` configs (their tokenizers, fitted on
the training split, and their `num_buckets`) it prints the mean true width of
a training example and the mean width it is padded to under each bucketing.
A train step costs about its padded width, so the ratio is the epoch's cost.
"""

from __future__ import annotations

import argparse

import numpy as np

from flax_attn import from_config
from flax_attn import input_pipeline as ip
from flax_attn.configs import multi30k, multi30k_tutorial


def quantile_widths(widths: np.ndarray, num_buckets: int, multiple: int = 4) -> tuple[int, ...]:
  """The former bucketing: widths at length quantiles, rounded up to `multiple`."""
  qs = np.quantile(widths, np.linspace(0, 1, num_buckets + 1)[1:])
  return tuple(sorted({int(-(-q // multiple) * multiple) for q in qs}))


def mean_padded(widths: np.ndarray, buckets: tuple[int, ...]) -> float:
  edges = np.asarray(buckets)
  return float(edges[np.searchsorted(edges, widths)].mean())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data/multi30k")
  args = parser.parse_args()
  for name, module in (("multi30k", multi30k), ("multi30k_tutorial", multi30k_tutorial)):
    c = module.get_config()
    c.data_dir = args.data_dir
    train = from_config.load_task(c)["train"]
    src_tok, trg_tok = from_config.fit_tokenizers(c, train)
    src, trg, _ = ip.encode_pairs(train.src, train.trg, src_tok, trg_tok, c.max_src_len,
                                  c.max_trg_len)
    w = ip.example_widths(src, trg)
    line = f"{name}: true width {w.mean():.2f}"
    for label, buckets in (("quantiles", quantile_widths(w, c.num_buckets)),
                           ("bucket_widths", ip.bucket_widths(w, c.num_buckets))):
      pad = mean_padded(w, buckets)
      line += f"; {label} {buckets} pad to {pad:.2f} (+{100 * (pad / w.mean() - 1):.0f} %)"
    print(line)


if __name__ == "__main__":
  main()
