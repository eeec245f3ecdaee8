"""Deferred weight gradients for recurrent scans.

Differentiating a scan through `y_t = x_t W` makes the backward pass add
`x_t^T dy_t` into a `W`-sized accumulator at every step: many thin matmuls
(inner size = batch) and a read and write of the accumulator per step. Here
the scan body sees `y_t = x_t stop_gradient(W) + z_t` with `z_t = 0`; the
backward pass returns `dz_t = dy_t` as a stacked output (no accumulation) and
the weight gradient becomes one large matmul after the scan:
`dW = sum_t x_t^T dz_t`. Values and gradients are unchanged.

Under `jax.shard_map` the offsets vary like the inputs, and the gradient of
a replicated weight is summed over the devices, as plain autodiff's is.

`with disabled():` traces these scans as plain autodiff instead (the weights
differentiated inside the scan), the reference the tests compare against.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

from flax_attn.parallel import cotangent_of, varying_like

_ENABLED = True


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within the block, functions from `defer_weight_grads` trace as plain
  autodiff of `run`. Read when tracing: a function traced before (by
  `jax.jit`, `make_jaxpr`, ...) keeps the mode of that trace from JAX's cache."""
  global _ENABLED
  previous, _ENABLED = _ENABLED, False
  try:
    yield
  finally:
    _ENABLED = previous


def weight_grad(x: jax.Array, dz: jax.Array, w: jax.Array) -> jax.Array:
  """`dW = sum x^T dz` over steps and batch.

  A weight `[I, O]` takes `x [T, B, I]`, `dz [T, B, O]`; a stack of weights
  `[D, I, O]` (one per direction) takes `x [T, D, B, I]`, `dz [T, D, B, O]`.
  """
  if w.ndim == 2:
    x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, dz.shape[-1])
    out = jnp.dot(x2.T, dz2.astype(x2.dtype), preferred_element_type=jnp.float32)
  else:
    out = jnp.einsum("tdbi,tdbo->dio", x, dz.astype(x.dtype), preferred_element_type=jnp.float32)
  return out.astype(w.dtype)


def defer_weight_grads(run: Callable, inputs_of: Callable) -> Callable:
  """Wraps `run(weights, zs, *args) -> outputs` so that its weights' gradients
  are computed after the scan.

  Args:
    run: pure function; `weights` is a tuple of `num_weights` matrices used
      only as `x_t @ w + z_t`; `zs` the matching tuple of stacked zero
      offsets (shape of the products, one per step); `args` differentiable.
    inputs_of: `(outputs, *args) -> tuple of stacked x_t`, the inputs that
      multiplied each weight at each step (`[T, ..., I]`).

  Returns:
    `f(weights, z_shapes, *args) -> outputs`, differentiable in weights and
    args (plain autodiff of `run` when traced under `disabled()`).
  """

  def zeros(weights, z_shapes, args):
    # Varying like the inputs under shard_map: each device's `dz` is its own.
    return varying_like(tuple(jnp.zeros(s, jnp.float32) for s in z_shapes), weights, args)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
  def f(weights, z_shapes, *args):
    return run(weights, zeros(weights, z_shapes, args), *args)

  def fwd(weights, z_shapes, *args):
    zs = zeros(weights, z_shapes, args)
    frozen = tuple(jax.lax.stop_gradient(w) for w in weights)
    outputs, vjp_fn = jax.vjp(lambda zs, *a: run(frozen, zs, *a), zs, *args)
    return outputs, (vjp_fn, outputs, args, weights)

  def bwd(z_shapes, res, g):
    del z_shapes
    vjp_fn, outputs, args, weights = res
    dzs, *dargs = vjp_fn(g)
    xs = inputs_of(outputs, *args)
    dweights = tuple(cotangent_of(w, weight_grad(x, dz, w))
                     for x, dz, w in zip(xs, dzs, weights))
    return (dweights, *dargs)

  f.defvjp(fwd, bwd)

  def call(weights, z_shapes, *args):
    if _ENABLED:
      return f(weights, z_shapes, *args)
    return run(weights, zeros(weights, z_shapes, args), *args)

  return call

