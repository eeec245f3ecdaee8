"""A GRU cell in PyTorch's layout, with the input projection split off.

PyTorch's `nn.GRU` computes, with gates in the order (r, z, n):

  gi = x W_ih + b_ih          gh = h W_hh + b_hh
  r = sigmoid(gi_r + gh_r)    z = sigmoid(gi_z + gh_z)
  n = tanh(gi_n + r * gh_n)   h' = (1 - z) * n + z * h

`GRUCell` keeps exactly these four tensors (kernels transposed to
`[in, 3*hidden]`), so PyTorch weights load without any arithmetic, and it
exposes `input_gates` separately so callers can compute `gi` for a whole
sequence in one matmul before the recurrent scan.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def gru_update(gi_Bx3H: jax.Array, gh_Bx3H: jax.Array, h_BxH: jax.Array) -> jax.Array:
  """One GRU update from precomputed input and hidden gate pre-activations."""
  gi_r, gi_z, gi_n = jnp.split(gi_Bx3H.astype(jnp.float32), 3, axis=-1)
  gh_r, gh_z, gh_n = jnp.split(gh_Bx3H.astype(jnp.float32), 3, axis=-1)
  r = jax.nn.sigmoid(gi_r + gh_r)
  z = jax.nn.sigmoid(gi_z + gh_z)
  n = jnp.tanh(gi_n + r * gh_n)
  return (1.0 - z) * n + z * h_BxH


def weight_init(init_std: float | None) -> Callable[..., Any]:
  """The tutorial's `normal(0, init_std)` or Glorot-uniform when `None`."""
  if init_std is None:
    return nn.initializers.glorot_uniform()
  return nn.initializers.normal(stddev=init_std)


class GRUCell(nn.Module):
  """GRU cell with PyTorch's gate order and biases.

  Attributes:
    input_dim: features of the input `x`.
    hidden_dim: features of the state `h`.
    init_std: see `Seq2SeqConfig.init_std`.
    dtype: matmul dtype; the state and the gate arithmetic stay float32.
    param_dtype: parameter dtype.
  """

  input_dim: int
  hidden_dim: int
  init_std: float | None = 0.01
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    init = weight_init(self.init_std)
    zeros = nn.initializers.zeros_init()
    h3 = 3 * self.hidden_dim
    self.input_kernel = self.param("input_kernel", init, (self.input_dim, h3), self.param_dtype)
    self.input_bias = self.param("input_bias", zeros, (h3,), self.param_dtype)
    self.recurrent_kernel = self.param("recurrent_kernel", init, (self.hidden_dim, h3),
                                       self.param_dtype)
    self.recurrent_bias = self.param("recurrent_bias", zeros, (h3,), self.param_dtype)

  def input_gates(self, x_xD: jax.Array) -> jax.Array:
    """`x W_ih + b_ih`: `[..., input_dim] -> [..., 3*hidden]` (any leading dims)."""
    return dense(x_xD, self.input_kernel, self.input_bias, self.dtype)

  def hidden_gates(self, h_BxH: jax.Array) -> jax.Array:
    """`h W_hh + b_hh`: `[batch, hidden] -> [batch, 3*hidden]`."""
    return dense(h_BxH, self.recurrent_kernel, self.recurrent_bias, self.dtype)

  def __call__(self, h_BxH: jax.Array, x_BxD: jax.Array) -> jax.Array:
    """One step from the raw input: returns the new state `[batch, hidden]`."""
    return gru_update(self.input_gates(x_BxD), self.hidden_gates(h_BxH), h_BxH)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Any) -> jax.Array:
  y = jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y


