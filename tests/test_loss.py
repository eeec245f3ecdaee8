"""loss: the masked cross entropy, and the same fused with the output projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_attn import Seq2SeqConfig, init_params
from flax_attn.loss import cross_entropy_sums, projected_cross_entropy_sums, row_nll_sums
from flax_attn.model import Seq2Seq


def _inputs(b=5, t=7, f=12, v=11, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((b, t, f)), jnp.float32),
          jnp.asarray(rng.standard_normal((f, v)), jnp.float32),
          jnp.asarray(rng.standard_normal(v), jnp.float32),
          jnp.asarray(rng.integers(0, v, (b, t))),
          jnp.asarray(rng.random((b, t)) > 0.3, jnp.float32))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [8, 13, 1024])  # several chunks, a ragged last one, one
def test_fused_equals_projection_then_loss(label_smoothing, chunk_rows):
  feats, kernel, bias, targets, weights = _inputs()
  plain = lambda f, k, b: cross_entropy_sums(jnp.dot(f, k) + b, targets, weights, label_smoothing)
  fused = lambda f, k, b: projected_cross_entropy_sums(f, k, b, targets, weights, label_smoothing,
                                                       chunk_rows=chunk_rows)
  np.testing.assert_allclose(jax.jit(fused)(feats, kernel, bias), plain(feats, kernel, bias),
                             rtol=1e-6)
  grads_plain = jax.grad(lambda *a: plain(*a)[0], argnums=(0, 1, 2))(feats, kernel, bias)
  grads_fused = jax.jit(jax.grad(lambda *a: fused(*a)[0], argnums=(0, 1, 2)))(feats, kernel, bias)
  for got, want in zip(grads_fused, grads_plain):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_row_sums_add_up_to_the_totals_and_skip_padding():
  feats, kernel, bias, targets, weights = _inputs(seed=3)
  logits = jnp.dot(feats, kernel) + bias
  nll_B, weight_B = row_nll_sums(logits, targets, weights)
  assert nll_B.shape == weight_B.shape == (feats.shape[0],)
  _, nll_sum, weight_sum = cross_entropy_sums(logits, targets, weights, label_smoothing=0.1)
  np.testing.assert_allclose(jnp.sum(nll_B), nll_sum, rtol=1e-6)
  np.testing.assert_allclose(weight_B, jnp.sum(weights, axis=1))
  np.testing.assert_allclose(jnp.sum(weight_B), weight_sum)
  # row 0 by hand: -log softmax at each real target, padding ignored
  logp = jax.nn.log_softmax(logits[0])
  want = -sum(float(logp[t, targets[0, t]]) for t in range(targets.shape[1]) if weights[0, t] > 0)
  np.testing.assert_allclose(nll_B[0], want, rtol=1e-5)


def test_fused_gradient_scales_with_the_cotangent():
  feats, kernel, bias, targets, weights = _inputs(seed=1)
  loss = lambda k: projected_cross_entropy_sums(feats, k, bias, targets, weights)[0]
  np.testing.assert_allclose(jax.grad(lambda k: 3.0 * loss(k))(kernel),
                             3.0 * jax.grad(loss)(kernel), rtol=1e-6)


def test_fused_bfloat16_matmuls_stay_close():
  feats, kernel, bias, targets, weights = _inputs(seed=2)
  want = cross_entropy_sums(jnp.dot(feats, kernel) + bias, targets, weights)[0]
  got = projected_cross_entropy_sums(feats, kernel, bias, targets, weights, dtype=jnp.bfloat16)[0]
  assert abs(float(got) - float(want)) < 0.02 * abs(float(want))


@pytest.mark.slow
def test_model_features_times_the_projection_are_its_logits():
  config = Seq2SeqConfig(src_vocab_size=13, trg_vocab_size=9, emb_dim=4, enc_hidden=6,
                         dec_hidden=5, attn_dim=7, dropout=0.3)
  params = init_params(config, jax.random.PRNGKey(0))
  src = jnp.array([[5, 6, 7, 3], [4, 3, 1, 1]])
  lengths, trg_in = jnp.array([4, 2]), jnp.array([[2, 5, 6], [2, 7, 1]])
  rngs = {"dropout": jax.random.PRNGKey(1)}
  model = Seq2Seq(config)
  logits = model.apply({"params": params}, src, lengths, trg_in, train=True, rngs=rngs)
  feats = model.apply({"params": params}, src, lengths, trg_in, train=True, rngs=rngs,
                      method=Seq2Seq.teacher_forced_features)
  dec = params["decoder"]
  np.testing.assert_allclose(jnp.dot(feats, dec["out_kernel"]) + dec["out_bias"], logits,
                             rtol=1e-5, atol=1e-6)
