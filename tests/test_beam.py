"""Beam search: greedy parity, exhaustive-search optimality, limits, n-best."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_attn import Seq2Seq, Seq2SeqConfig, init_params
from flax_attn.beam import BeamOutput, beam_search
from flax_attn.greedy import greedy_decode

PAD, BOS, EOS = 1, 2, 3
_SMALL_SRC = dict(seed=1, lengths=(5, 2, 4), width=5)


@functools.lru_cache(maxsize=None)
def _model(trg_vocab, seed=0):
  config = Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=trg_vocab, emb_dim=8, enc_hidden=8,
                         dec_hidden=8, attn_dim=8, dropout=0.0, init_std=0.5)
  return config, init_params(config, jax.random.PRNGKey(seed))


def _src(seed=0, lengths=(7, 3, 5, 1, 6, 2), width=7):
  lengths = np.array(lengths)
  src = np.random.default_rng(seed).integers(4, 10, (len(lengths), width))
  src[np.arange(width)[None, :] >= lengths[:, None]] = PAD
  return src, lengths


def _penalty(length, alpha):
  return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


def _rescore(config, params, src, lengths, tokens_BxNxL, hyp_lengths_BxN):
  """Teacher-forced log P of every hypothesis (its first `length` tokens)."""
  batch, n, max_len = tokens_BxNxL.shape
  tokens = np.asarray(tokens_BxNxL).reshape(batch * n, max_len)
  trg_in = np.concatenate([np.full((batch * n, 1), BOS), tokens[:, :-1]], axis=1)
  logits = Seq2Seq(config).apply({"params": params}, jnp.asarray(np.repeat(src, n, axis=0)),
                                 jnp.asarray(np.repeat(lengths, n)), jnp.asarray(trg_in))
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  token_lp = np.take_along_axis(log_probs, tokens[:, :, None], axis=2)[:, :, 0]
  live = np.arange(max_len)[None, :] < np.asarray(hyp_lengths_BxN).reshape(-1, 1)
  return (token_lp * live).sum(axis=1).reshape(batch, n)


@functools.lru_cache(maxsize=None)
def _all_hypotheses(max_len=3):
  """Every hypothesis of at most `max_len` tokens of the 6-token model, per
  sentence of `_SMALL_SRC`: a dict from token tuple to (log_prob, length,
  finished). Finished ones end at their first EOS; unfinished ones have
  exactly `max_len` tokens and no EOS."""
  config, params = _model(trg_vocab=6, seed=1)
  src, lengths = _src(**_SMALL_SRC)
  seqs = np.array(list(itertools.product(range(config.trg_vocab_size), repeat=max_len)))
  batch, n = len(lengths), len(seqs)
  trg_in = np.concatenate([np.full((n, 1), BOS), seqs[:, :-1]], axis=1)
  logits = Seq2Seq(config).apply(
      {"params": params}, jnp.asarray(np.repeat(src, n, axis=0)),
      jnp.asarray(np.repeat(lengths, n)), jnp.asarray(np.tile(trg_in, (batch, 1))))
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  token_lp = np.take_along_axis(log_probs, np.tile(seqs, (batch, 1))[:, :, None], axis=2)
  cum = np.cumsum(token_lp[:, :, 0], axis=1).reshape(batch, n, max_len)
  result = []
  for b in range(batch):
    hyps = {}
    for seq, c in zip(seqs, cum[b]):
      eos = np.flatnonzero(seq == EOS)
      end = eos[0] + 1 if eos.size else max_len
      hyps[tuple(seq[:end].tolist())] = (c[end - 1], end, bool(eos.size))
    result.append(hyps)
  return result


def _best_finished(hyps, alpha, n):
  """The `n` best finished hypotheses as (score, tokens), best first."""
  scored = [(lp / _penalty(length, alpha), k) for k, (lp, length, fin) in hyps.items() if fin]
  return sorted(scored, reverse=True)[:n]


def _unpack(out: BeamOutput, b, k):
  length = int(out.lengths[b, k])
  return tuple(np.asarray(out.tokens[b, k, :length]).tolist())


def test_beam_size_one_is_greedy():
  config, params = _model(trg_vocab=12)
  src, lengths = _src()
  out = beam_search(config, params, src, lengths, beam_size=1, alpha=0.0, max_len=8)
  ref = greedy_decode(config, params, src, lengths, max_len=8)
  ref_lengths = np.asarray(ref.lengths)
  assert 1 < ref_lengths.min() and ref_lengths.max() == 8 and (ref_lengths < 8).any()
  np.testing.assert_array_equal(out.tokens[:, 0], ref.tokens)
  np.testing.assert_array_equal(out.lengths[:, 0], ref.lengths)
  np.testing.assert_allclose(out.attention[:, 0], ref.attention, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_equals_exhaustive_search(alpha):
  # With 6 tokens and 3 steps there are at most 5*5*6 = 150 candidates at a
  # step, so a beam of 150 keeps them all: the search must be exact.
  config, params = _model(trg_vocab=6, seed=1)
  src, lengths = _src(**_SMALL_SRC)
  out = beam_search(config, params, src, lengths, beam_size=150, alpha=alpha, max_len=3,
                    n_best=4)
  for b, hyps in enumerate(_all_hypotheses()):
    best = _best_finished(hyps, alpha, 4)
    assert [_unpack(out, b, k) for k in range(4)] == [k for _, k in best]
    np.testing.assert_allclose(out.scores[b], [score for score, _ in best], atol=1e-4)
    np.testing.assert_allclose(out.log_probs[b], [hyps[k][0] for _, k in best], atol=1e-4)
  assert (np.diff(np.asarray(out.scores), axis=1) <= 0).all()


def test_vocab_sized_beam_is_consistent_with_exhaustive_search():
  config, params = _model(trg_vocab=6, seed=1)
  src, lengths = _src(**_SMALL_SRC)
  alpha = 0.6
  out = beam_search(config, params, src, lengths, beam_size=6, alpha=alpha, max_len=3, n_best=2)
  for b, hyps in enumerate(_all_hypotheses()):
    for k in range(2):
      log_prob, length, _ = hyps[_unpack(out, b, k)]
      assert out.lengths[b, k] == length
      np.testing.assert_allclose(out.log_probs[b, k], log_prob, atol=1e-4)
      np.testing.assert_allclose(out.scores[b, k], log_prob / _penalty(length, alpha), atol=1e-4)
    # Step 0's EOS is always in the beam, so the best is finished; the search
    # is not exact with this beam, but it cannot beat the optimum.
    assert hyps[_unpack(out, b, 0)][2]
    assert out.scores[b, 0] <= _best_finished(hyps, alpha, 1)[0][0] + 1e-5


def test_shapes_ordering_and_attention():
  config, params = _model(trg_vocab=12)
  src, lengths = _src()
  out = beam_search(config, params, src, lengths, beam_size=4, alpha=0.6, n_best=3)
  max_len = 2 * 7 + 10
  assert out.tokens.shape == (6, 3, max_len) and out.tokens.dtype == jnp.int32
  assert out.lengths.shape == out.scores.shape == out.log_probs.shape == (6, 3)
  assert out.attention.shape == (6, 3, max_len, 7)
  tokens, hyp_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  limits = np.minimum(max_len, 2 * lengths + 10)
  assert (hyp_lengths >= 1).all() and (hyp_lengths <= limits[:, None]).all()
  finished = tokens[np.arange(6)[:, None], np.arange(3)[None, :], hyp_lengths - 1] == EOS
  assert finished.any() and not finished.all()  # both kinds occur
  for b in range(6):
    # Finished hypotheses first; scores descend within each group.
    n_fin = finished[b].sum()
    assert finished[b, :n_fin].all() and not finished[b, n_fin:].any()
    assert (np.diff(out.scores[b, :n_fin]) <= 0).all()
    assert (np.diff(out.scores[b, n_fin:]) <= 0).all()
    for k in range(3):
      seq = tokens[b, k]
      assert EOS not in seq[:hyp_lengths[b, k] - 1] and (seq[hyp_lengths[b, k]:] == PAD).all()
  positions = np.arange(max_len)[None, None, :]
  sums = np.asarray(out.attention).sum(axis=-1)
  np.testing.assert_allclose(sums, (positions < hyp_lengths[:, :, None]).astype(float), atol=1e-5)
  src_pad = np.arange(7)[None, :] >= lengths[:, None]
  assert np.all(np.asarray(out.attention)[np.broadcast_to(
      src_pad[:, None, None, :], out.attention.shape)] == 0.0)
  np.testing.assert_allclose(out.log_probs, _rescore(config, params, src, lengths,
                                                     out.tokens, out.lengths), atol=1e-4)
  np.testing.assert_allclose(out.scores, out.log_probs / _penalty(hyp_lengths, 0.6), rtol=1e-5)


def test_more_source_padding_changes_nothing():
  config, params = _model(trg_vocab=12)
  src, lengths = _src()
  wide = np.concatenate([src, np.full((6, 3), PAD)], axis=1)
  a = beam_search(config, params, src, lengths, beam_size=4, alpha=0.6, n_best=3)
  b = beam_search(config, params, wide, lengths, beam_size=4, alpha=0.6, n_best=3)
  width = a.tokens.shape[-1]
  assert b.tokens.shape[-1] == width + 6
  np.testing.assert_array_equal(b.tokens[..., :width], a.tokens)
  assert (np.asarray(b.tokens[..., width:]) == PAD).all()
  np.testing.assert_array_equal(b.lengths, a.lengths)
  np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
  np.testing.assert_allclose(b.attention[:, :, :width, :7], a.attention, atol=1e-5)
  assert (np.asarray(b.attention[:, :, width:]) == 0).all()
  assert (np.asarray(b.attention[..., 7:]) == 0).all()


def test_unfinished_sentences_return_best_live_at_their_limit():
  config, params = _model(trg_vocab=12)
  decoder = dict(params["decoder"], out_bias=params["decoder"]["out_bias"].at[EOS].set(-1e4))
  params = dict(params, decoder=decoder)  # EOS never makes the beam
  src, lengths = _src()
  out = beam_search(config, params, src, lengths, beam_size=4, alpha=0.6, n_best=3,
                    max_len_ratio=1.0, max_len_offset=1, max_len=24)
  assert out.tokens.shape[-1] == 24
  limits = lengths + 1
  np.testing.assert_array_equal(out.lengths, np.repeat(limits[:, None], 3, axis=1))
  tokens = np.asarray(out.tokens)
  assert not (tokens == EOS).any()
  assert ((tokens == PAD) | (np.arange(24)[None, None, :] < limits[:, None, None])).all()
  rescored = _rescore(config, params, src, lengths, out.tokens, out.lengths)
  np.testing.assert_allclose(out.log_probs, rescored, atol=1e-4)
  np.testing.assert_allclose(out.scores, rescored / _penalty(limits[:, None], 0.6), atol=1e-4)
  assert (np.diff(np.asarray(out.scores), axis=1) <= 0).all()


@pytest.mark.parametrize("kwargs", [
    dict(beam_size=0), dict(beam_size=2.0), dict(beam_size=2, n_best=3), dict(n_best=0),
    dict(alpha=-0.1), dict(max_len=0), dict(max_len_ratio=-1.0),
    dict(max_len_ratio=0.0, max_len_offset=0),
])
def test_bad_arguments(kwargs):
  config, params = _model(trg_vocab=6, seed=1)
  src, lengths = _src(**_SMALL_SRC)
  with pytest.raises(ValueError) as err:
    beam_search(config, params, src, lengths, **kwargs)
  assert "\n" not in str(err.value)
