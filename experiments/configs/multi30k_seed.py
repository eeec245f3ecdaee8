"""multi30k_seed: the old name of `multi30k_tutorial` (kept so that commands and
notes written before the rename still work)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from multi30k_tutorial import get_config  # noqa: E402,F401
