"""sort: random token strings -> the same tokens sorted (see synthetic.py).

The config itself is `flax_attn/configs/sort.py` (installed with the package:
`flax-attn-train --config sort` finds it by name); this file keeps
`--config experiments/configs/sort.py` working.
"""

from flax_attn.configs.sort import get_config  # noqa: F401
