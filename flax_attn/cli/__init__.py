"""The command-line tools, installed as console scripts by `pip install`.

  flax-attn-train      train a config (by name or file): `flax_attn.cli.train`
  flax-attn-evaluate   metrics of a checkpoint or export: `flax_attn.cli.evaluate`
  flax-attn-translate  translate arguments or stdin:     `flax_attn.cli.translate`
  flax-attn-export     an inference checkpoint to share: `flax_attn.cli.export`

`python -m flax_attn.cli.train ...` is the same as `flax-attn-train ...`, and
`experiments/<tool>.py` in a checkout is a thin wrapper around each.
Every tool reports bad usage as one `error: ...` line with exit code 2.
"""
