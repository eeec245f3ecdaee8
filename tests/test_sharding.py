"""`jax.shard_map` with its default checks (`check_vma=True`) and `jax.jit` with
`NamedSharding`, on 2 fake CPU devices (conftest makes 4; a mesh takes the
first 2): the model, its gradients, a user's training step, the project's
`train_step`, greedy and beam search, against plain calls and `pmap`."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flax_attn import Seq2Seq, beam_search, deferred, greedy_decode, init_params, parallel
from flax_attn.loss import cross_entropy_sums
from test_train import CFG, global_batch  # the pmap test's model and batches

AXIS = parallel.AXIS
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 2:
    pytest.skip(f"needs 2 devices, this {jax.default_backend()} has {jax.device_count()}")
  return Mesh(np.array(jax.devices()[:2]), (AXIS,))


@pytest.fixture(scope="module")
def params():
  return init_params(jax.random.key(0), CFG)


def _close(a, b, **kw):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **{**TOL, **kw})


def _apply(p, b, **kw):
  return Seq2Seq(CFG).apply({"params": p}, b["src"], b["src_lengths"], b["trg_in"], **kw)


# ---- the mechanism ---------------------------------------------------------------------

def test_constant_carry_fails_the_check_and_varying_like_fixes_it(mesh):
  """What the modules do for every loop carry: a carry built from constants
  fails shard_map's check; `varying_like` (no axis name) passes, bit for bit."""
  def run(init):
    def f(x):
      return jax.lax.scan(lambda c, xt: (c + xt, c), init(x), x)[0]
    return jax.shard_map(f, mesh=mesh, in_specs=P(None, AXIS), out_specs=P(AXIS))

  x = jnp.arange(12.0).reshape(3, 4)
  with pytest.raises(TypeError, match="carry"):
    run(lambda x: jnp.zeros(x.shape[1:]))(x)
  np.testing.assert_array_equal(run(lambda x: parallel.varying_like(jnp.zeros(x.shape[1:]), x))(x),
                                x.sum(0))
  special = jnp.array([-0.0, jnp.nan, jnp.inf, 1.5])
  assert parallel.varying_like(special, x).tobytes() == special.tobytes()


# ---- the model and its gradients -------------------------------------------------------

@pytest.mark.parametrize("teacher_forcing", [pytest.param(1.0, marks=pytest.mark.slow), 0.0])
@pytest.mark.parametrize("defer", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_forward_and_gradients_under_shard_map_equal_plain(mesh, params, teacher_forcing, defer):
  """Logits split over the mesh; the gradient of each device's loss with
  respect to replicated parameters arrives summed over the devices (the
  deferred weight gradients do the same as plain autodiff)."""
  batch = jax.tree.map(jnp.asarray, global_batch(0))
  kw = dict(teacher_forcing=teacher_forcing, rngs={"dropout": jax.random.key(1)})
  loss = lambda p, b: _apply(p, b, **kw).sum()

  def per_device(p, b):
    return _apply(p, b, **kw), jax.grad(loss)(p, b)

  def per_device_explicit(p, b):  # each device's own gradient, summed by hand
    return jax.lax.psum(jax.grad(loss)(parallel.vary(p), b), AXIS)

  specs = dict(mesh=mesh, in_specs=(P(), P(AXIS)))
  with contextlib.nullcontext() if defer else deferred.disabled():
    logits, grads = jax.jit(jax.shard_map(per_device, out_specs=(P(AXIS), P()), **specs))(
        params, batch)
    explicit = jax.jit(jax.shard_map(per_device_explicit, out_specs=P(), **specs))(params, batch)
    want_grads = jax.jit(jax.grad(loss))(params, batch)
  _close(logits, _apply(params, batch, **kw))
  _close(grads, want_grads, rtol=1e-5, atol=1e-5)
  _close(explicit, want_grads, rtol=1e-5, atol=1e-5)


# ---- training steps against the project's pmap step -------------------------------------

def _tx():
  from flax_attn.optimizer import make_optimizer
  return make_optimizer(learning_rate=1e-2)


def _pmap_reference(params, teacher_forcing: float = 1.0, steps: int = 2):
  """The project's `train_step` under `pmap` on 2 devices: (params, losses)."""
  from flax_attn.steps import TrainState, train_step
  tx = _tx()
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(7), lr_scale=jnp.ones((), jnp.float32))
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx,
                                         teacher_forcing=teacher_forcing), donate_state=False)
  s, losses = parallel.replicate(state, 2), []
  for i in range(steps):
    s, m = step(s, parallel.shard(global_batch(i), 2))
    losses.append(float(m["loss_sum"][0] / m["weight_sum"][0]))
  return parallel.unreplicate(s.params), losses, state


def _user_loss(p, b):
  logits = _apply(p, b)
  loss_sum, _, weight_sum = cross_entropy_sums(logits, b["trg_out"], b["weights"])
  return loss_sum, weight_sum


@pytest.mark.slow
@pytest.mark.parametrize("grads_by", ["autodiff_sum", "vary_and_psum"])
def test_user_step_under_shard_map_equals_pmap_train_step(mesh, params, grads_by):
  """A data-parallel step written with `jax.shard_map` (replicated parameters,
  batch split over `AXIS`), either way of summing gradients, gives the pmap
  step's parameters and loss."""
  tx = _tx()

  def step(p, opt_state, b):
    total = jnp.maximum(jax.lax.psum(jnp.sum(b["weights"]), AXIS), 1.0)
    if grads_by == "autodiff_sum":  # replicated p: autodiff sums the devices' gradients
      loss, grads = jax.value_and_grad(lambda p: _user_loss(p, b)[0] / total)(p)
    else:  # each device's own gradient (p marked varying), then an explicit psum
      loss, grads = jax.value_and_grad(lambda p: _user_loss(p, b)[0] / total)(parallel.vary(p))
      grads = jax.lax.psum(grads, AXIS)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, jax.lax.psum(loss, AXIS)

  sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                                  out_specs=(P(), P(), P())))
  p, opt_state, losses = params, tx.init(params), []
  for i in range(2):
    p, opt_state, loss = sharded(p, opt_state, global_batch(i))
    losses.append(float(loss))
  want_params, want_losses, _ = _pmap_reference(params)
  _close(p, want_params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)


def test_jit_named_sharding_step_equals_pmap_train_step(mesh, params):
  """The same step over the global batch under `jax.jit`, the batch split
  over the mesh by `NamedSharding` and the parameters replicated."""
  tx = _tx()

  @jax.jit
  def step(p, opt_state, b):
    def loss_fn(p):
      loss_sum, weight_sum = _user_loss(p, b)
      return loss_sum / jnp.maximum(weight_sum, 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  p = jax.device_put(params, replicated)
  opt_state, losses = jax.device_put(tx.init(params), replicated), []
  for i in range(2):
    b = jax.device_put(global_batch(i), split)
    assert b["src"].sharding.spec == P(AXIS) and len(b["src"].sharding.device_set) == 2
    p, opt_state, loss = step(p, opt_state, b)
    losses.append(float(loss))
  want_params, want_losses, _ = _pmap_reference(params)
  _close(p, want_params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)


def _project_step_under_shard_map(mesh, state, teacher_forcing, layout):
  from flax_attn.steps import train_step
  f = functools.partial(train_step, model_config=CFG, tx=_tx(), teacher_forcing=teacher_forcing)
  if layout == "stacked":  # pmap's layout: a copy of the state per device, [devices, ...]
    def per_device(s, b):
      s, m = f(jax.tree.map(lambda x: x[0], s), jax.tree.map(lambda x: x[0], b))
      return jax.tree.map(lambda x: x[None], (s, m))
    sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS)))
    s = parallel.replicate(state, 2)
    for i in range(2):
      s, m = sharded(s, parallel.shard(global_batch(i), 2))
    return parallel.unreplicate(s.params), float(m["loss_sum"][0] / m["weight_sum"][0])
  sharded = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P())))
  s = state
  for i in range(2):
    s, m = sharded(s, global_batch(i))
  return s.params, float(m["loss_sum"] / m["weight_sum"])


@pytest.mark.slow
@pytest.mark.parametrize("layout, teacher_forcing", [
    ("stacked", 0.5), ("stacked", 1.0), ("replicated", 0.5), ("replicated", 1.0),
])
def test_project_train_step_under_shard_map_equals_pmap(mesh, params, layout, teacher_forcing):
  want_params, want_losses, state = _pmap_reference(params, teacher_forcing)
  got_params, got_loss = _project_step_under_shard_map(mesh, state, teacher_forcing, layout)
  _close(got_params, want_params)
  np.testing.assert_allclose(got_loss, want_losses[-1], rtol=1e-5)


# ---- decoding ----------------------------------------------------------------------------

def _src():
  b = global_batch(3)
  return jnp.asarray(b["src"]), jnp.asarray(b["src_lengths"])


def test_greedy_inside_shard_map_equals_plain_call(mesh, params):
  src, lengths = _src()
  f = jax.shard_map(lambda p, s, l: greedy_decode(CFG, p, s, l, max_len=7), mesh=mesh,
                    in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS))
  got, want = jax.jit(f)(params, src, lengths), greedy_decode(CFG, params, src, lengths, 7)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  _close(got.attention, want.attention)


@pytest.mark.parametrize("beam_size, n_best", [(3, 2), (1, 1)])
def test_beam_inside_shard_map_equals_plain_call(mesh, params, beam_size, n_best):
  src, lengths = _src()
  kw = dict(beam_size=beam_size, n_best=n_best, alpha=0.6)
  f = jax.shard_map(lambda p, s, l: beam_search(CFG, p, s, l, **kw), mesh=mesh,
                    in_specs=(P(), P(AXIS), P(AXIS)), out_specs=P(AXIS))
  got, want = jax.jit(f)(params, src, lengths), beam_search(CFG, params, src, lengths, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.lengths, want.lengths)
  _close((got.scores, got.log_probs, got.attention), (want.scores, want.log_probs, want.attention))
