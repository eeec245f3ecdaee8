"""multi30k_tutorial: German->English Multi30k with the tutorial's own settings.

The config itself is `flax_attn/configs/multi30k_tutorial.py` (installed with the package:
`flax-attn-train --config multi30k_tutorial` finds it by name); this file keeps
`--config experiments/configs/multi30k_tutorial.py` working.
"""

from flax_attn.configs.multi30k_tutorial import get_config  # noqa: F401
