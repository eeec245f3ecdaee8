"""g2p: English grapheme-to-phoneme on CMUdict (stress stripped; our hash split).

The config itself is `flax_attn/configs/g2p.py` (installed with the package:
`flax-attn-train --config g2p` finds it by name); this file keeps
`--config experiments/configs/g2p.py` working.
"""

from flax_attn.configs.g2p import get_config  # noqa: F401
