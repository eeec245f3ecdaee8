"""Load the weights of the PyTorch tutorial model (bentrevett/pytorch-seq2seq 3-4).

PyTorch `Linear` stores `[out, in]`; Flax kernels are `[in, out]`, so every
matrix is transposed. The GRU keeps PyTorch's gate order (r, z, n) and both
biases (see `flax_attn.gru`), so nothing else changes. The attention Linear
acts on `[s; h_j]`: its first `dec_hidden` input columns become `W`
(`query_kernel`), the rest `U` (`key_kernel`), and its bias `key_bias`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from flax_attn.config import Seq2SeqConfig


def _to_numpy(value: Any, key: str) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  try:
    return np.asarray(value, dtype=np.float32)
  except (TypeError, ValueError) as e:
    raise ValueError(f"state_dict[{key!r}] is not an array: {e}") from None


def params_from_torch(state_dict: Mapping[str, Any], pad_id: int = 1, bos_id: int = 2,
                      eos_id: int = 3, **config_overrides) -> tuple[Seq2SeqConfig, dict]:
  """Converts the tutorial model's `state_dict` into `(Seq2SeqConfig, params)`.

  Args:
    state_dict: the tutorial `Seq2Seq`'s `state_dict()` (torch tensors or numpy arrays).
    pad_id, bos_id, eos_id: special ids of its vocabularies (torchtext: 1, 2, 3).
    **config_overrides: other `Seq2SeqConfig` fields (dropout, dtype, ...).

  Returns:
    The config inferred from the shapes and a params tree for `Seq2Seq`.

  Raises:
    ValueError: naming the key that is missing, unexpected or of the wrong shape.
  """
  sd = {k: _to_numpy(v, k) for k, v in state_dict.items()}
  used: set[str] = set()

  def get(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if key not in sd:
      raise ValueError(f"state_dict has no key {key!r} (is this the tutorial's Seq2Seq?)")
    used.add(key)
    if shape is not None and sd[key].shape != shape:
      raise ValueError(f"state_dict[{key!r}] has shape {sd[key].shape}, expected {shape}")
    return sd[key]

  src_vocab, emb = get("encoder.embedding.weight").shape
  enc_h = get("encoder.rnn.weight_hh_l0").shape[1]
  dec_h = get("encoder.fc.weight").shape[0]
  trg_vocab = get("decoder.embedding.weight").shape[0]
  attn = get("decoder.attention.attn.weight").shape[0]
  layers = 1 + max(int(m.group(1)) for k in sd
                   if (m := re.fullmatch(r"encoder\.rnn\.weight_ih_l(\d+)", k)))
  config = Seq2SeqConfig(src_vocab_size=src_vocab, trg_vocab_size=trg_vocab, pad_id=pad_id,
                         bos_id=bos_id, eos_id=eos_id, emb_dim=emb, enc_hidden=enc_h,
                         dec_hidden=dec_h, attn_dim=attn, enc_layers=layers, **config_overrides)

  def gru(prefix: str, suffix: str, in_dim: int, hidden: int) -> dict:
    return {
        "input_kernel": get(f"{prefix}.weight_ih_{suffix}", (3 * hidden, in_dim)).T,
        "input_bias": get(f"{prefix}.bias_ih_{suffix}", (3 * hidden,)),
        "recurrent_kernel": get(f"{prefix}.weight_hh_{suffix}", (3 * hidden, hidden)).T,
        "recurrent_bias": get(f"{prefix}.bias_hh_{suffix}", (3 * hidden,)),
    }

  encoder = {"embedding": {"embedding": get("encoder.embedding.weight")}}
  for i in range(layers):
    in_dim = emb if i == 0 else 2 * enc_h
    encoder[f"layer_{i}"] = {
        "fwd": gru("encoder.rnn", f"l{i}", in_dim, enc_h),
        "bwd": gru("encoder.rnn", f"l{i}_reverse", in_dim, enc_h),
    }
  encoder["bridge"] = {"kernel": get("encoder.fc.weight", (dec_h, 2 * enc_h)).T,
                       "bias": get("encoder.fc.bias", (dec_h,))}
  attn_w = get("decoder.attention.attn.weight", (attn, dec_h + 2 * enc_h))
  out_dim = dec_h + 2 * enc_h + emb
  decoder = {
      "embedding": {"embedding": get("decoder.embedding.weight", (trg_vocab, emb))},
      "attention": {
          "query_kernel": attn_w[:, :dec_h].T,
          "key_kernel": attn_w[:, dec_h:].T,
          "key_bias": get("decoder.attention.attn.bias", (attn,)),
          "v": get("decoder.attention.v.weight", (1, attn))[0],
      },
      "gru": gru("decoder.rnn", "l0", emb + 2 * enc_h, dec_h),
      "out_kernel": get("decoder.fc_out.weight", (trg_vocab, out_dim)).T,
      "out_bias": get("decoder.fc_out.bias", (trg_vocab,)),
  }
  unexpected = sorted(set(sd) - used)
  if unexpected:
    raise ValueError(f"state_dict has unexpected key {unexpected[0]!r}"
                     + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
  params = {"encoder": encoder, "decoder": decoder}
  params = jax.tree.map(lambda a: np.ascontiguousarray(a, dtype=config.params_dtype), params)
  return config, params

