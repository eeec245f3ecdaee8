"""multi30k_en_de: English->German Multi30k, the `multi30k` config turned round.

The config itself is `flax_attn/configs/multi30k_en_de.py` (installed with the package:
`flax-attn-train --config multi30k_en_de` finds it by name); this file keeps
`--config experiments/configs/multi30k_en_de.py` working.
"""

from flax_attn.configs.multi30k_en_de import get_config  # noqa: F401
