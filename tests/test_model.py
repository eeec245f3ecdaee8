"""Seq2Seq: masking, scan vs. a Python loop, jit vs. no jit, gradients, input checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_attn import Seq2Seq, Seq2SeqConfig, init_params
from flax_attn.greedy import greedy_decode

CFG = Seq2SeqConfig(src_vocab_size=23, trg_vocab_size=19, emb_dim=6, enc_hidden=8, dec_hidden=10,
                    attn_dim=7, dropout=0.0, init_std=0.4)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def _batch(seed=0, batch=4, src_len=7, trg_len=5):
  rng = np.random.default_rng(seed)
  lengths = np.array([7, 2, 5, 1][:batch])
  src = rng.integers(4, CFG.src_vocab_size, (batch, src_len))
  src[np.arange(src_len)[None, :] >= lengths[:, None]] = CFG.pad_id
  trg = rng.integers(4, CFG.trg_vocab_size, (batch, trg_len))
  trg[:, 0] = CFG.bos_id
  return jnp.asarray(src), jnp.asarray(lengths), jnp.asarray(trg)


def _apply(params, src, lengths, trg, **kw):
  logits, state = Seq2Seq(CFG).apply({"params": params}, src, lengths, trg,
                                     mutable=["intermediates"], **kw)
  return logits, state["intermediates"]["attention"][0]


def test_shapes_and_attention_rows(params):
  src, lengths, trg = _batch()
  logits, attn = _apply(params, src, lengths, trg)
  chex.assert_shape(logits, (4, 5, CFG.trg_vocab_size))
  chex.assert_shape(attn, (4, 5, 7))
  np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-6)
  pad = np.arange(7)[None, None, :] >= np.asarray(lengths)[:, None, None]
  assert np.all(np.asarray(attn)[np.broadcast_to(pad, attn.shape)] == 0.0)


def test_extra_padding_changes_nothing(params):
  src, lengths, trg = _batch()
  logits, attn = _apply(params, src, lengths, trg)
  wide = jnp.concatenate([src, jnp.full((4, 6), CFG.pad_id)], axis=1)
  # Garbage (not PAD) in the padded area must not matter either: only lengths count.
  wide = wide.at[:, 9:].set(5)
  logits2, attn2 = _apply(params, wide, lengths, trg)
  np.testing.assert_allclose(logits2, logits, atol=1e-6)
  np.testing.assert_allclose(attn2[:, :, :7], attn, atol=1e-6)
  assert float(jnp.abs(attn2[:, :, 7:]).max()) == 0.0


def test_batch_rows_independent(params):
  src, lengths, trg = _batch()
  logits, _ = _apply(params, src, lengths, trg)
  one, _ = _apply(params, src[2:3, :5], lengths[2:3], trg[2:3])
  np.testing.assert_allclose(one[0], logits[2], atol=1e-5)


def test_scan_equals_python_loop(params):
  src, lengths, trg = _batch()
  logits, attn = _apply(params, src, lengths, trg)
  model = Seq2Seq(CFG)
  s, cache = model.apply({"params": params}, src, lengths, method=Seq2Seq.encode)
  for t in range(trg.shape[1]):
    s, step_logits, step_attn = model.apply({"params": params}, s, trg[:, t], cache,
                                            method=Seq2Seq.decode_step)
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    np.testing.assert_allclose(step_attn, attn[:, t], atol=1e-6)


def test_free_running_equals_greedy(params):
  src, lengths, trg = _batch()
  logits = Seq2Seq(CFG).apply({"params": params}, src, lengths, trg, teacher_forcing=0.0)
  greedy_tokens = np.asarray(jnp.argmax(logits, -1))
  out = greedy_decode(CFG, params, src, lengths, max_len=trg.shape[1])
  live = np.arange(trg.shape[1])[None] < np.asarray(out.lengths)[:, None]
  np.testing.assert_array_equal(np.asarray(out.tokens)[live], greedy_tokens[live])


def test_scheduled_sampling_uses_rng(params):
  src, lengths, trg = _batch()
  tf1 = Seq2Seq(CFG).apply({"params": params}, src, lengths, trg)
  run = lambda seed: Seq2Seq(CFG).apply({"params": params}, src, lengths, trg,
                                        teacher_forcing=0.5, rngs={"dropout": jax.random.key(seed)})
  a, b = run(0), run(0)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a[:, 0], tf1[:, 0], atol=1e-5)  # step 0 always sees BOS
  assert any(not np.allclose(run(s), tf1, atol=1e-5) for s in range(5))


def _assert_changes_training_only(cfg, params, src, lengths, trg):
  """`cfg` (CFG plus a dropout) gives CFG's logits at inference and other
  logits in training, teacher forced and with scheduled sampling."""
  apply = lambda c, **kw: Seq2Seq(c).apply({"params": params}, src, lengths, trg, **kw)
  for tf in (1.0, 0.5):
    kw = dict(teacher_forcing=tf, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(apply(cfg, **kw), apply(CFG, **kw))
    assert not np.allclose(apply(cfg, train=True, **kw), apply(CFG, train=True, **kw), atol=1e-3)


OUT_CFG = CFG.__class__(**{**CFG.to_dict(), "out_dropout": 0.5})


def test_out_dropout_masks_state_and_context_only_in_training(params):
  """`out_dropout` zeroes entries of `[s'; c]` (the rest scaled by 2 at 0.5)
  in training, leaves the embedding third alone, and changes nothing at
  inference: same logits as the model without it, teacher forced or not."""
  src, lengths, trg = _batch()
  _assert_changes_training_only(OUT_CFG, params, src, lengths, trg)
  feats = lambda cfg, train: Seq2Seq(cfg).apply(
      {"params": params}, src, lengths, trg, train=train, rngs={"dropout": jax.random.key(1)},
      method=Seq2Seq.teacher_forced_features)
  ref, dropped = np.asarray(feats(CFG, False)), np.asarray(feats(OUT_CFG, True))
  n_sc = CFG.dec_hidden + CFG.memory_dim
  np.testing.assert_array_equal(dropped[..., n_sc:], ref[..., n_sc:])
  zero = dropped[..., :n_sc] == 0
  assert 0.35 < zero.mean() < 0.65
  np.testing.assert_allclose(dropped[..., :n_sc][~zero], 2 * ref[..., :n_sc][~zero], rtol=1e-5)


MEM_CFG = CFG.__class__(**{**CFG.to_dict(), "memory_dropout": 0.5})


def test_memory_dropout_masks_encoder_states_only_in_training(params):
  """`memory_dropout` drops entries of the attention memory `h_j` in training
  (the cache's memory is 0 or 2x the deterministic one, its keys are those of
  the dropped memory) and leaves `s0` and inference alone."""
  src, lengths, trg = _batch()
  _assert_changes_training_only(MEM_CFG, params, src, lengths, trg)
  encode = lambda cfg, train: Seq2Seq(cfg).apply(
      {"params": params}, src, lengths, train=train, rngs={"dropout": jax.random.key(1)},
      method=Seq2Seq.encode)
  (s0_ref, ref), (s0, dropped) = encode(CFG, False), encode(MEM_CFG, True)
  np.testing.assert_array_equal(s0, s0_ref)
  mem, mem_ref = np.asarray(dropped.memory), np.asarray(ref.memory)
  zero = mem == 0
  real = np.arange(src.shape[1])[None, :] < np.asarray(lengths)[:, None]   # padding is 0 anyway
  assert 0.35 < zero[real].mean() < 0.65
  np.testing.assert_allclose(mem[~zero], 2 * mem_ref[~zero], rtol=1e-5)
  keys = Seq2Seq(MEM_CFG).apply({"params": params}, dropped.memory,
                                method=lambda m, x: m.decoder.attention.project_keys(x))
  np.testing.assert_allclose(dropped.keys, keys, rtol=1e-5, atol=1e-6)


class TestJit(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_agrees(self):
    """The jitted and the un-jitted variant equal a reference run with JAX's
    jit off (`jax.disable_jit`: the scans run as Python loops, op by op)."""
    params = init_params(CFG, jax.random.key(0))
    src, lengths, trg = _batch()
    traced = []

    def fwd(p, s, l, t):
      traced.append(isinstance(s, jax.core.Tracer))
      return _apply(p, s, l, t)

    with jax.disable_jit():
      ref_logits, ref_attn = fwd(params, src, lengths, trg)
    logits, attn = self.variant(fwd)(params, src, lengths, trg)
    # The variant is what its name says; the reference was not traced.
    assert traced == [False, self.variant.type == chex.ChexVariantType.WITH_JIT]
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(attn, ref_attn, atol=1e-6)


@pytest.mark.parametrize("tf", [pytest.param(1.0, marks=pytest.mark.slow), 0.5])
def test_gradients_finite_and_nonzero(params, tf):
  src, lengths, trg = _batch()
  cfg = Seq2SeqConfig(**{**CFG.to_dict(), "dropout": 0.3})

  def loss(p):
    logits = Seq2Seq(cfg).apply({"params": p}, src, lengths, trg, train=True, teacher_forcing=tf,
                                rngs={"dropout": jax.random.key(1)})
    return jax.nn.log_softmax(logits).mean()

  grads = jax.grad(loss)(params)
  chex.assert_tree_all_finite(grads)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_bf16_runs(params):
  src, lengths, trg = _batch()
  cfg = Seq2SeqConfig(**{**CFG.to_dict(), "dtype": "bfloat16"})
  logits = Seq2Seq(cfg).apply({"params": params}, src, lengths, trg)
  ref = Seq2Seq(CFG).apply({"params": params}, src, lengths, trg)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, atol=0.1)


@pytest.mark.parametrize("bad, match", [
    (lambda s, l, t: (s[0], l, t), "src must have rank 2"),
    (lambda s, l, t: (s.astype(jnp.float32), l, t), "src must hold integers"),
    (lambda s, l, t: (s, l.at[0].set(0), t), r"src_lengths must be in \[1, 7\]"),
    (lambda s, l, t: (s, l.at[0].set(8), t), r"src_lengths must be in \[1, 7\]"),
    (lambda s, l, t: (s, l[:2], t), "batch"),
])
def test_bad_inputs(params, bad, match):
  with pytest.raises(ValueError, match=match):
    Seq2Seq(CFG).apply({"params": params}, *bad(*_batch()))


def test_config_validation():
  with pytest.raises(ValueError, match="dropout"):
    Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=10, dropout=1.5)
  with pytest.raises(ValueError, match="out_dropout"):
    Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=10, out_dropout=-0.1)
  with pytest.raises(ValueError, match="memory_dropout"):
    Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=10, memory_dropout=1.0)
  with pytest.raises(ValueError, match="eos_id"):
    Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=3)
  assert Seq2SeqConfig.from_dict(CFG.to_dict()) == CFG


def test_gradients_match_python_loop(params):
  """The scan's deferred weight gradients equal plain autodiff of a step loop."""
  src, lengths, trg = _batch()
  model = Seq2Seq(CFG)
  targets = jnp.roll(trg, -1, axis=1)

  def loss_scan(p):
    logits = model.apply({"params": p}, src, lengths, trg)
    return jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(targets, CFG.trg_vocab_size))

  def loss_loop(p):
    s, cache = model.apply({"params": p}, src, lengths, method=Seq2Seq.encode)
    total = 0.0
    for t in range(trg.shape[1]):
      s, logits, _ = model.apply({"params": p}, s, trg[:, t], cache, method=Seq2Seq.decode_step)
      total += jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(targets[:, t],
                                                                   CFG.trg_vocab_size))
    return total

  g_scan, g_loop = jax.grad(loss_scan)(params), jax.grad(loss_loop)(params)
  for path, a in jax.tree_util.tree_leaves_with_path(g_scan):
    b = g_loop
    for k in path:
      b = b[k.key]
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
@pytest.mark.parametrize("unroll", [3, 8])
def test_scan_unroll_changes_no_result(unroll):
  """`scan_unroll` only changes how XLA loops (3 leaves a remainder on the 5
  target / 7 source steps, 8 exceeds them): logits, gradients (teacher forced
  and scheduled sampling, with dropout) and greedy tokens are those of unroll 1."""
  base = Seq2SeqConfig(**{**CFG.to_dict(), "enc_layers": 2, "dropout": 0.3})
  unrolled = Seq2SeqConfig(**{**base.to_dict(), "scan_unroll": unroll})
  p = init_params(base, jax.random.key(1))
  src, lengths, trg = _batch()

  def loss(cfg, tf):
    def f(q):
      logits = Seq2Seq(cfg).apply({"params": q}, src, lengths, trg, train=True,
                                  teacher_forcing=tf, rngs={"dropout": jax.random.key(2)})
      return jax.nn.log_softmax(logits).mean(), logits
    return jax.value_and_grad(f, has_aux=True)(p)

  for tf in (1.0, 0.5):
    (ref_loss, ref_logits), ref_grads = loss(base, tf)
    (got_loss, got_logits), got_grads = loss(unrolled, tf)
    np.testing.assert_allclose(got_logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    chex.assert_trees_all_close(got_grads, ref_grads, atol=1e-6, rtol=1e-5)
  ref = greedy_decode(base, p, src, lengths, max_len=6)
  got = greedy_decode(unrolled, p, src, lengths, max_len=6)
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_array_equal(got.lengths, ref.lengths)


# ---- strict inputs (issue 42) -----------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (lambda s, l, t: (s.at[1, 0].set(999), l, t), r"src holds token ids outside \[0, 23\).*999"),
    (lambda s, l, t: (s.at[0, 0].set(-1), l, t), r"src holds token ids outside \[0, 23\).*-1"),
    # Padding too: an out-of-range id embeds as NaN, and NaN * 0 is NaN.
    (lambda s, l, t: (s.at[1, 6].set(23), l, t), r"src holds token ids outside \[0, 23\)"),
    (lambda s, l, t: (s, l, t.at[2, 3].set(19)), r"trg_in holds token ids outside \[0, 19\)"),
])
def test_out_of_vocabulary_ids_are_rejected(params, bad, match):
  src, lengths, trg = bad(*_batch())
  for call in (lambda: Seq2Seq(CFG).apply({"params": params}, src, lengths, trg),
               lambda: Seq2Seq(CFG).apply({"params": params}, src, lengths, trg,
                                          method=Seq2Seq.teacher_forced_features)):
    with pytest.raises(ValueError, match=match) as err:
      call()
    assert "\n" not in str(err.value)


def test_decoders_reject_out_of_vocabulary_source_ids(params):
  from flax_attn import beam_search
  src, lengths, _ = _batch()
  src = src.at[3, 2].set(40)
  with pytest.raises(ValueError, match=r"src holds token ids outside \[0, 23\)"):
    greedy_decode(CFG, params, src, lengths, max_len=4)
  with pytest.raises(ValueError, match=r"src holds token ids outside \[0, 23\)"):
    beam_search(CFG, params, src, lengths, beam_size=2)


def test_ids_under_jit_are_unchecked_and_checkify_catches_them(params):
  """Documented: traced ids are not checked (they embed as NaN); checkify's
  index checks, or `check_inputs` on the host batch first, catch them."""
  from jax.experimental import checkify

  from flax_attn.model import check_inputs
  src, lengths, trg = _batch()
  src = src.at[1, 0].set(999)
  apply = lambda p, s, l, t: Seq2Seq(CFG).apply({"params": p}, s, l, t)
  assert np.isnan(np.asarray(jax.jit(apply)(params, src, lengths, trg))[1]).all()
  err, _ = jax.jit(checkify.checkify(apply, errors=checkify.index_checks))(params, src, lengths, trg)
  with pytest.raises(checkify.JaxRuntimeError, match="index 999 is out of bounds"):
    err.throw()
  with pytest.raises(ValueError, match="src holds token ids outside"):
    check_inputs(src, lengths, trg, CFG)


def test_teacher_forcing_must_be_a_static_float(params):
  src, lengths, trg = _batch()
  apply = lambda tf: Seq2Seq(CFG).apply({"params": params}, src, lengths, trg,
                                        teacher_forcing=tf, rngs={"dropout": jax.random.key(0)})
  with pytest.raises(TypeError, match="teacher_forcing must be a static Python float"):
    jax.jit(apply)(0.5)
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match=r"teacher_forcing must be in \[0, 1\]"):
      apply(bad)
  # Static numbers of any kind work, and jit with it static.
  np.testing.assert_array_equal(apply(np.float32(0.5)), apply(0.5))
  np.testing.assert_allclose(jax.jit(apply, static_argnums=0)(0.5), apply(0.5), atol=1e-5)


@pytest.mark.parametrize("ids", [dict(pad_id=2), dict(eos_id=1), dict(pad_id=3, bos_id=3, eos_id=3)])
def test_special_ids_must_differ(ids):
  with pytest.raises(ValueError, match="pad_id, bos_id and eos_id must differ"):
    Seq2SeqConfig(src_vocab_size=10, trg_vocab_size=10, **ids)


def test_reverse_within_lengths_and_its_gather_gradient():
  """The reversal keeps padding in place, undoes itself, and its custom
  gradient (a gather) equals autodiff's scatter-add of the plain gather bit for bit."""
  from flax_attn import encoder
  x = jax.random.normal(jax.random.key(0), (5, 3, 4))
  lengths = jnp.array([5, 2, 1])
  y = encoder.reverse_within_lengths(x, lengths)
  np.testing.assert_array_equal(y[:, 0], x[::-1, 0])
  np.testing.assert_array_equal(y[:2, 1], x[1::-1, 1])
  np.testing.assert_array_equal(y[2:, 1], x[2:, 1])
  np.testing.assert_array_equal(y[:, 2], x[:, 2])
  np.testing.assert_array_equal(encoder.reverse_within_lengths(y, lengths), x)
  w = jax.random.normal(jax.random.key(1), x.shape)
  got = jax.grad(lambda x: (encoder.reverse_within_lengths(x, lengths) * w).sum())(x)
  want = jax.grad(lambda x: (encoder._reverse(x, lengths) * w).sum())(x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, encoder.reverse_within_lengths(w, lengths))
