"""Train an experiment: flax-attn-train --config dates --workdir DIR.

The tool is `flax_attn.cli.train` (installed as `flax-attn-train`); this file keeps
`python experiments/train.py ...` working in a checkout.
"""

from flax_attn.cli.train import run

if __name__ == "__main__":
  run()
