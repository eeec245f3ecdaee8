"""reverse: random token strings -> the same tokens reversed (see synthetic.py).

The config itself is `flax_attn/configs/reverse.py` (installed with the package:
`flax-attn-train --config reverse` finds it by name); this file keeps
`--config experiments/configs/reverse.py` working.
"""

from flax_attn.configs.reverse import get_config  # noqa: F401
