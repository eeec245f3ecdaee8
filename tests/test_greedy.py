"""greedy_decode: equal to a step-by-step loop, and it stops once every row has ended."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_attn import Seq2Seq, Seq2SeqConfig, init_params
from flax_attn.greedy import finish, greedy_decode

CFG = Seq2SeqConfig(src_vocab_size=23, trg_vocab_size=19, emb_dim=6, enc_hidden=8, dec_hidden=10,
                    attn_dim=7, dropout=0.0, init_std=0.4)
MAX_LEN = 12


def _batch(batch=6, src_len=7, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, src_len + 1, batch)
  src = rng.integers(4, CFG.src_vocab_size, (batch, src_len))
  src[np.arange(src_len)[None, :] >= lengths[:, None]] = CFG.pad_id
  return jnp.asarray(src, jnp.int32), jnp.asarray(lengths, jnp.int32)


def _loop_reference(params, src, lengths, max_len):
  """`max_len` decoder steps in a Python loop, every row to the end, then `finish`."""
  model = Seq2Seq(CFG)
  s, cache = model.apply({"params": params}, src, lengths, method=Seq2Seq.encode)
  token = jnp.full((src.shape[0],), CFG.bos_id, jnp.int32)
  tokens, attns = [], []
  for _ in range(max_len):
    s, logits, attn = model.apply({"params": params}, s, token, cache, method=Seq2Seq.decode_step)
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    tokens.append(token)
    attns.append(attn)
  return finish(CFG, jnp.stack(tokens, 1), jnp.stack(attns, 1))


@pytest.fixture(scope="module")
def ragged_params():
  """Parameters whose greedy outputs end (EOS) at different steps, all before
  MAX_LEN: the EOS output bias raised until that holds for the test batch."""
  base = init_params(CFG, jax.random.key(0))
  src, lengths = _batch()
  for bias in np.arange(0.0, 6.0, 0.25):
    params = jax.tree.map(lambda x: x, base)
    params["decoder"]["out_bias"] = base["decoder"]["out_bias"].at[CFG.eos_id].add(bias)
    ref_lengths = np.asarray(_loop_reference(params, src, lengths, MAX_LEN).lengths)
    if ref_lengths.max() < MAX_LEN and len(set(ref_lengths.tolist())) > 1:
      return params
  pytest.fail("no EOS bias gives rows that end at different steps before MAX_LEN")


def test_equals_the_full_length_loop(ragged_params):
  src, lengths = _batch()
  ref = _loop_reference(ragged_params, src, lengths, MAX_LEN)
  out = greedy_decode(CFG, ragged_params, src, lengths, max_len=MAX_LEN)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_allclose(out.attention, ref.attention, atol=1e-6)


def test_stops_when_every_row_has_ended(ragged_params, monkeypatch):
  """The decoder step runs max(lengths) times, not MAX_LEN times (counted by a
  callback inside the loop body)."""
  calls = []
  step = Seq2Seq.decode_step

  def counting_step(self, *args, **kwargs):
    jax.debug.callback(lambda: calls.append(1))
    return step(self, *args, **kwargs)

  monkeypatch.setattr(Seq2Seq, "decode_step", counting_step)
  src, lengths = _batch()
  out = greedy_decode(CFG, ragged_params, src, lengths, max_len=MAX_LEN + 1)  # a fresh trace
  jax.effects_barrier()
  assert len(calls) == int(np.max(out.lengths)) < MAX_LEN


def test_runs_max_len_steps_when_a_row_never_ends():
  params = init_params(CFG, jax.random.key(0))
  params["decoder"]["out_bias"] = params["decoder"]["out_bias"].at[CFG.eos_id].set(-1e9)
  src, lengths = _batch()
  out = greedy_decode(CFG, params, src, lengths, max_len=MAX_LEN)
  np.testing.assert_array_equal(out.lengths, MAX_LEN)
  ref = _loop_reference(params, src, lengths, MAX_LEN)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
