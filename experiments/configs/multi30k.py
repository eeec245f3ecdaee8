"""multi30k: German->English Multi30k, our best configuration.

The config itself is `flax_attn/configs/multi30k.py` (installed with the package:
`flax-attn-train --config multi30k` finds it by name); this file keeps
`--config experiments/configs/multi30k.py` working.
"""

from flax_attn.configs.multi30k import get_config  # noqa: F401
