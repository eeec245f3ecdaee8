"""Export a training workdir as an inference checkpoint to hand to someone else.

The tool is `flax_attn.cli.export` (installed as `flax-attn-export`); this file keeps
`python experiments/export.py ...` working in a checkout.
"""

from flax_attn.cli.export import run

if __name__ == "__main__":
  run()
