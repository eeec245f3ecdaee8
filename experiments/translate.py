"""Translate with a checkpoint: arguments, or stdin (streaming).

The tool is `flax_attn.cli.translate` (installed as `flax-attn-translate`); this file keeps
`python experiments/translate.py ...` working in a checkout.
"""

from flax_attn.cli.translate import run

if __name__ == "__main__":
  run()
