"""flax_attn: additive (Bahdanau) attention encoder-decoder in JAX/Flax."""

from flax_attn.attention import AdditiveAttention
from flax_attn.beam import BeamOutput, beam_search
from flax_attn.config import Seq2SeqConfig
from flax_attn.greedy import DecodeOutput, greedy_decode
from flax_attn.decoder import Decoder, DecoderCache
from flax_attn.encoder import Encoder
from flax_attn.gru import GRUCell
from flax_attn.model import Seq2Seq, init_params
from flax_attn.translator import Translator

__all__ = [
    "AdditiveAttention", "BeamOutput", "DecodeOutput", "Decoder", "DecoderCache", "Encoder",
    "GRUCell", "Seq2Seq", "Seq2SeqConfig", "Translator", "beam_search", "greedy_decode",
    "init_params",
]
__version__ = "0.1.0"
