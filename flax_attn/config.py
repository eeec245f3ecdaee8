"""`Seq2SeqConfig`: every hyper-parameter that fixes the network's shape."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike


# The dtypes the modules compute and store parameters in, by name.
DTYPES = ("float32", "bfloat16", "float16")

# The dropout rates, each in [0, 1) (validated here and in from_config.validate_config).
DROPOUT_FIELDS = ("dropout", "out_dropout", "memory_dropout")


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  """Shape and numerics of the additive-attention encoder-decoder.

  The defaults are the configuration of bentrevett/pytorch-seq2seq tutorial 4
  (Multi30k de->en): embeddings 256, encoder and decoder GRUs 512, attention
  size equal to the decoder size, dropout 0.5 on the embeddings.

  Attributes:
    src_vocab_size: source vocabulary size (rows of the encoder embedding).
    trg_vocab_size: target vocabulary size (logits per position).
    pad_id, bos_id, eos_id: special token ids, three different ids in both
      vocabularies (the tutorial's torchtext order is unk=0, pad=1, bos=2,
      eos=3).
    emb_dim: embedding size of both sides.
    enc_hidden: hidden size of each encoder GRU direction; the attention
      memory has `2 * enc_hidden` features.
    dec_hidden: decoder GRU hidden size.
    attn_dim: size of the additive-attention layer (`None`: `dec_hidden`,
      as in the tutorial).
    dropout: dropout rate applied to both embeddings during training.
    out_dropout: dropout rate on the decoder state and context `[s'; c]`
      where they enter the output projection, during training (0: none, as
      in the tutorial).
    memory_dropout: dropout rate on the encoder states `h_j` (the attention
      memory: keys and contexts) during training (0: none, as in the
      tutorial); the bridge to `s0` reads them undropped.
    enc_layers: number of stacked bidirectional GRU layers in the encoder.
    init_std: standard deviation of the normal init of every weight matrix
      (the tutorial's `init_weights` uses 0.01, biases 0); `None` uses the
      usual Glorot-uniform init instead.
    dtype: computation dtype, "float32", "bfloat16" or "float16", given as
      that name or as the dtype (`jnp.bfloat16`, `np.dtype("float16")`);
      stored as the name, so the config stays hashable and JSON-ready.
      Softmax and the recurrent state stay float32.
    param_dtype: dtype of the parameters (same forms as `dtype`).
    scan_unroll: `unroll` argument of the recurrent scans.
  """

  src_vocab_size: int
  trg_vocab_size: int
  pad_id: int = 1
  bos_id: int = 2
  eos_id: int = 3
  emb_dim: int = 256
  enc_hidden: int = 512
  dec_hidden: int = 512
  attn_dim: int | None = None
  dropout: float = 0.5
  out_dropout: float = 0.0
  memory_dropout: float = 0.0
  enc_layers: int = 1
  init_std: float | None = 0.01
  dtype: str | DTypeLike = "float32"        # stored as the name
  param_dtype: str | DTypeLike = "float32"
  scan_unroll: int = 1

  def __post_init__(self) -> None:
    for name in ("dtype", "param_dtype"):
      object.__setattr__(self, name, _dtype_name(name, getattr(self, name)))
    for name in ("src_vocab_size", "trg_vocab_size", "emb_dim", "enc_hidden",
                 "dec_hidden", "enc_layers", "scan_unroll"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"Seq2SeqConfig.{name} must be a positive int, got {value!r}")
    if self.attn_dim is not None and self.attn_dim < 1:
      raise ValueError(f"Seq2SeqConfig.attn_dim must be positive or None, got {self.attn_dim!r}")
    for name in DROPOUT_FIELDS:
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"Seq2SeqConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
    for name in ("pad_id", "bos_id", "eos_id"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Seq2SeqConfig.{name} must be an int, got {value!r}")
      object.__setattr__(self, name, value := int(value))
      if not 0 <= value < min(self.src_vocab_size, self.trg_vocab_size):
        raise ValueError(f"Seq2SeqConfig.{name}={value} is outside the vocabularies")
    if len({self.pad_id, self.bos_id, self.eos_id}) < 3:
      raise ValueError(f"Seq2SeqConfig: pad_id, bos_id and eos_id must differ, got "
                       f"pad_id={self.pad_id} bos_id={self.bos_id} eos_id={self.eos_id}")

  @property
  def attention_dim(self) -> int:
    return self.attn_dim if self.attn_dim is not None else self.dec_hidden

  @property
  def memory_dim(self) -> int:
    return 2 * self.enc_hidden

  @property
  def compute_dtype(self) -> np.dtype:
    """`dtype` as a numpy/jnp dtype."""
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> np.dtype:
    """`param_dtype` as a numpy/jnp dtype."""
    return jnp.dtype(self.param_dtype)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Seq2SeqConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown Seq2SeqConfig fields: {unknown}")
    return cls(**d)


def _dtype_name(field: str, value: Any) -> str:
  """"bfloat16", jnp.bfloat16, np.dtype("bfloat16") -> "bfloat16"; other dtypes raise."""
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = None
  if name not in DTYPES:
    raise ValueError(f"Seq2SeqConfig.{field} must be one of {', '.join(DTYPES)} (a name or "
                     f"a dtype such as jnp.bfloat16), got {value!r}")
  return name
