"""flax_attn: additive (Bahdanau) attention encoder-decoder in JAX/Flax.

The names below are imported on first use, so `import flax_attn.serving` or
`flax_attn.tokenizers` does not load Flax or the model's modules.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, for type checkers and editors
  from flax_attn.attention import AdditiveAttention
  from flax_attn.beam import BeamOutput, beam_search
  from flax_attn.config import Seq2SeqConfig
  from flax_attn.decoder import Decoder, DecoderCache
  from flax_attn.encoder import Encoder
  from flax_attn.greedy import DecodeOutput, greedy_decode
  from flax_attn.gru import GRUCell
  from flax_attn.model import Seq2Seq, init_params
  from flax_attn.translator import Translator

_WHERE = {
    "AdditiveAttention": "attention", "BeamOutput": "beam", "beam_search": "beam",
    "Seq2SeqConfig": "config", "DecodeOutput": "greedy", "greedy_decode": "greedy",
    "Decoder": "decoder", "DecoderCache": "decoder", "Encoder": "encoder", "GRUCell": "gru",
    "Seq2Seq": "model", "init_params": "model", "Translator": "translator",
}
__all__ = [
    "AdditiveAttention", "BeamOutput", "DecodeOutput", "Decoder", "DecoderCache", "Encoder",
    "GRUCell", "Seq2Seq", "Seq2SeqConfig", "Translator", "beam_search", "greedy_decode",
    "init_params",
]
__version__ = "0.1.0"

# `paths` sets fsspec's `gs://` default (no stale listing cache) on import;
# it loads etils only.
from flax_attn import paths as _paths  # noqa: E402,F401


def __getattr__(name: str):
  if name in _WHERE:
    value = getattr(importlib.import_module(f"flax_attn.{_WHERE[name]}"), name)
    globals()[name] = value  # once
    return value
  raise AttributeError(f"module 'flax_attn' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))
