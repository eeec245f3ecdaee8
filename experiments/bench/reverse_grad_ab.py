"""`reverse_within_lengths`' gather gradient (as shipped) against autodiff's
scatter-add, in one process: the reversal's backward alone on the encoder's
output `[24, batch, 1024]` (20 calls each, twice), then the whole encoder's
forward and backward.

Run from the repository root: `python experiments/bench/reverse_grad_ab.py [--batch 256]`.
Tutorial sizes (embedding 256, GRUs 512, source length 24, dropout 0.5); for the
encoder, blocks of 3 calls alternate between the two, 4 blocks each. Prints min
and median ms and whether the loss and every gradient are bitwise equal.
"""

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.harness import Shapes, call_times, make_batch  # noqa: E402
from flax_attn import encoder  # noqa: E402
from flax_attn.config import Seq2SeqConfig  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=256)
  args = ap.parse_args()
  shapes = Shapes(batch=args.batch)
  cfg = Seq2SeqConfig(src_vocab_size=shapes.src_vocab, trg_vocab_size=shapes.trg_vocab,
                      emb_dim=shapes.emb, enc_hidden=shapes.hidden, dec_hidden=shapes.hidden,
                      dropout=shapes.dropout)
  batch = make_batch(shapes, 0)
  src, lengths = jnp.asarray(batch["src"]), jnp.asarray(batch["src_lengths"])
  enc = encoder.Encoder(cfg)
  params = enc.init(jax.random.key(0), src, lengths)["params"]

  def compiled():
    def loss(p):
      mem, _, s0 = enc.apply({"params": p}, src, lengths, train=True,
                             rngs={"dropout": jax.random.key(1)})
      return (mem * 0.01).sum() + s0.sum()
    fn = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(fn(params))

  shipped = encoder.reverse_within_lengths
  out_b = jax.random.normal(jax.random.key(2), (shapes.src_len, shapes.batch, 2 * shapes.hidden))
  for name, rev in [("gather gradient (as shipped)", shipped),
                    ("autodiff scatter-add", encoder._reverse)] * 2:
    vjp = jax.jit(lambda x, g, rev=rev: jax.vjp(lambda x: rev(x, lengths), x)[1](g)[0])
    t = call_times(lambda vjp=vjp: jax.block_until_ready(vjp(out_b, out_b)), 20)
    print(f"the reversal's backward alone, {name}: min {1e3 * min(t):.2f} "
          f"med {1e3 * statistics.median(t):.2f} ms")
  fns = {"gather gradient (as shipped)": compiled()}
  encoder.reverse_within_lengths = encoder._reverse  # plain autodiff: a scatter-add
  fns["autodiff scatter-add"] = compiled()
  encoder.reverse_within_lengths = shipped
  outs = [fn() for fn in fns.values()]
  equal = all(np.array_equal(a, b) for a, b in zip(*map(jax.tree.leaves, outs)))
  times = {name: [] for name in fns}
  for block in range(4):
    for name in (list(fns) if block % 2 == 0 else list(fns)[::-1]):
      times[name] += call_times(fns[name], 3)
  for name, t in times.items():
    print(f"encoder forward and backward, {name}: min {1e3 * min(t):.0f} "
          f"med {1e3 * statistics.median(t):.0f} ms")
  print("loss and gradients bitwise equal:", equal)


if __name__ == "__main__":
  main()
