"""Evaluate a checkpoint: one JSON line of metrics, system output written to a file.

The tool is `flax_attn.cli.evaluate` (installed as `flax-attn-evaluate`); this file keeps
`python experiments/evaluate.py ...` working in a checkout.
"""

from flax_attn.cli.evaluate import run

if __name__ == "__main__":
  run()
