"""`Seq2Seq`: the encoder, the additive attention and the scanned decoder."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_attn.config import Seq2SeqConfig
from flax_attn.decoder import Decoder, DecoderCache
from flax_attn.encoder import Encoder


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_inputs(src: jax.Array, src_lengths: jax.Array, trg_in: jax.Array | None = None,
                 config: Seq2SeqConfig | None = None) -> None:
  """Raises `ValueError` (one line) for malformed inputs.

  Ranks, dtypes and batch sizes are always checked. Values are checked only
  where they are concrete (not traced): `src_lengths` in `[1, src_len]` and,
  given `config`, every id of `src` in `[0, src_vocab_size)` and of `trg_in`
  in `[0, trg_vocab_size)` (padding included: an out-of-range id embeds as
  NaN). Under `jax.jit`, `shard_map` or `pmap` the values are tracers and
  are NOT checked; call this on the host batch before the step, or wrap the
  step in `jax.experimental.checkify.checkify(step, errors=checkify.index_checks)`
  (`tests/test_model.py` shows both).
  """
  for name, x, rank in (("src", src, 2), ("src_lengths", src_lengths, 1), ("trg_in", trg_in, 2)):
    if x is None:
      continue
    if not hasattr(x, "ndim") or x.ndim != rank:
      raise ValueError(f"{name} must have rank {rank}, got shape {getattr(x, 'shape', type(x))}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
  if src.shape[0] != src_lengths.shape[0]:
    raise ValueError(f"src has batch {src.shape[0]} but src_lengths has {src_lengths.shape[0]}")
  if trg_in is not None and trg_in.shape[0] != src.shape[0]:
    raise ValueError(f"src has batch {src.shape[0]} but trg_in has {trg_in.shape[0]}")
  if src.shape[1] < 1:
    raise ValueError("src must have at least one position")
  if _is_concrete(src_lengths):
    lengths = np.asarray(src_lengths)
    if lengths.size and (lengths.min() < 1 or lengths.max() > src.shape[1]):
      raise ValueError(f"src_lengths must be in [1, {src.shape[1]}] (the padded width), "
                       f"got min {lengths.min()} max {lengths.max()}")
  if config is None:
    return
  for name, x, vocab in (("src", src, config.src_vocab_size),
                         ("trg_in", trg_in, config.trg_vocab_size)):
    if x is None or not _is_concrete(x) or not x.size:
      continue
    ids = np.asarray(x)
    lo, hi = ids.min(), ids.max()
    if lo < 0 or hi >= vocab:
      bad = ids[(ids < 0) | (ids >= vocab)]
      raise ValueError(f"{name} holds token ids outside [0, {vocab}) (the vocabulary size): "
                       f"{bad.size} of them, e.g. {int(bad[0])} (min {lo}, max {hi})")


class Seq2Seq(nn.Module):
  """Bahdanau-attention encoder-decoder (bentrevett/pytorch-seq2seq tutorial 4).

  `model.apply({"params": p}, src, src_lengths, trg_in)` gives logits
  `[batch, trg_len, trg_vocab]`; with `mutable=["intermediates"]` the
  attention weights `[batch, trg_len, src_len]` come back under
  `intermediates/attention`. `encode`, `prepare` and `decode_step` are the
  pieces inference uses (`flax_attn.greedy`).
  """

  config: Seq2SeqConfig

  def setup(self) -> None:
    self.encoder = Encoder(self.config, name="encoder")
    self.decoder = Decoder(self.config, name="decoder")
    self.memory_dropout = nn.Dropout(self.config.memory_dropout)

  def _encode(self, src: jax.Array, src_lengths: jax.Array, train: bool
              ) -> tuple[jax.Array, DecoderCache]:
    """`(s0, cache)`; in training `memory_dropout` drops entries of the
    encoder states `h_j` (after the bridge has read them to make `s0`), so
    the keys and every context see the same dropped memory."""
    memory, mask, s0 = self.encoder(src, src_lengths, train=train)
    memory = self.memory_dropout(memory, deterministic=not train)
    return s0, self.decoder.prepare(memory, mask)

  def __call__(self, src: jax.Array, src_lengths: jax.Array, trg_in: jax.Array,
               train: bool = False, teacher_forcing: float = 1.0) -> jax.Array:
    """Logits for every target position.

    Args:
      src: `[batch, src_len]` int32 source ids, padded with `pad_id`.
      src_lengths: `[batch]` true source lengths, in `[1, src_len]`.
      trg_in: `[batch, trg_len]` int32 decoder inputs (`bos_id` first); logits
        at position t predict the token after `trg_in[:, t]`.
      train: dropout on (needs a "dropout" RNG).
      teacher_forcing: a static Python float in [0, 1], see `Decoder.__call__`
        (the tutorial trains with 0.5); a traced value raises `TypeError`.

    Returns:
      float32 logits `[batch, trg_len, trg_vocab]` (no softmax).

    Raises:
      ValueError: malformed inputs, see `check_inputs` (ids and lengths are
        checked only when concrete, not under `jit`).
    """
    check_inputs(src, src_lengths, trg_in, self.config)
    s0, cache = self._encode(src, src_lengths, train)
    logits, attn = self.decoder(s0, cache, trg_in, train=train, teacher_forcing=teacher_forcing)
    self.sow("intermediates", "attention", attn)
    return logits

  def teacher_forced_features(self, src: jax.Array, src_lengths: jax.Array, trg_in: jax.Array,
                              train: bool = False) -> jax.Array:
    """What the output projection reads under full teacher forcing,
    `[batch, trg_len, dec_hidden + 2*enc_hidden + emb]` float32:
    `__call__(..., teacher_forcing=1.0)` is these features times
    `decoder/out_kernel` plus `decoder/out_bias` (the train step fuses that
    projection with the loss: `loss.projected_cross_entropy_sums`)."""
    check_inputs(src, src_lengths, trg_in, self.config)
    s0, cache = self._encode(src, src_lengths, train)
    features, _ = self.decoder.teacher_forced_features(s0, cache, trg_in, train=train)
    return features

  def encode(self, src: jax.Array, src_lengths: jax.Array, train: bool = False
             ) -> tuple[jax.Array, DecoderCache]:
    """Returns `(s0 [batch, dec_hidden], DecoderCache)` for step-wise decoding."""
    check_inputs(src, src_lengths, config=self.config)
    return self._encode(src, src_lengths, train)

  def decode_step(self, s: jax.Array, token: jax.Array, cache: DecoderCache,
                  out_kernel_VxF: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step: `(s [batch, dec_hidden], token [batch])` -> `(s', logits
    [batch, trg_vocab], attention [batch, src_len])`. A decoding loop may pass
    `transposed_out_kernel(params)`, made once before the loop: same logits,
    a faster projection on a CPU."""
    chex.assert_rank([s, token], [2, 1])
    return self.decoder.step(s, token, cache, out_kernel_VxF)


def transposed_out_kernel(params: Any) -> jax.Array:
  """The output projection's kernel as `[trg_vocab, features]`, materialised
  (an optimization barrier keeps XLA from folding the transpose back into the
  matmul), for `Seq2Seq.decode_step(..., out_kernel_VxF=...)` in a loop."""
  return jax.lax.optimization_barrier(params["decoder"]["out_kernel"].T)


def init_params(rng: jax.Array, config: Seq2SeqConfig, src_len: int = 4,
                trg_len: int = 4) -> dict[str, Any]:
  """Fresh parameters for `config`, `init_params(rng, config)` like `model.init(rng, ...)`
  (shapes do not depend on the lengths).

  The older order `init_params(config, rng)` is still accepted; anything else
  raises `TypeError`.
  """
  if isinstance(rng, Seq2SeqConfig) and not isinstance(config, Seq2SeqConfig):
    rng, config = config, rng  # the pre-issue-42 order
  if not isinstance(config, Seq2SeqConfig):
    raise TypeError(f"init_params(rng, config): config must be a Seq2SeqConfig, "
                    f"got {type(config).__name__}")
  if not isinstance(rng, (jax.Array, np.ndarray)):
    raise TypeError(f"init_params(rng, config): rng must be a JAX random key "
                    f"(jax.random.key(0)), got {type(rng).__name__}")
  src = jnp.full((1, src_len), config.eos_id, jnp.int32)
  trg = jnp.full((1, trg_len), config.bos_id, jnp.int32)
  lengths = jnp.full((1,), src_len, jnp.int32)
  return Seq2Seq(config).init({"params": rng}, src, lengths, trg)["params"]
