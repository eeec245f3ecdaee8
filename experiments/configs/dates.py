"""dates: human-readable dates in many formats -> ISO 8601 (the default experiment).

The config itself is `flax_attn/configs/dates.py` (installed with the package:
`flax-attn-train --config dates` finds it by name); this file keeps
`--config experiments/configs/dates.py` working.
"""

from flax_attn.configs.dates import get_config  # noqa: F401
