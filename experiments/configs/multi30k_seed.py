"""multi30k_seed: the old name of `multi30k_tutorial` (kept so that commands and
notes written before the rename still work)."""

from flax_attn.configs.multi30k_tutorial import get_config  # noqa: F401
