"""A GRU cell in PyTorch's layout, with the input projection split off.

PyTorch's `nn.GRU` computes, with gates in the order (r, z, n):

  gi = x W_ih + b_ih          gh = h W_hh + b_hh
  r = sigmoid(gi_r + gh_r)    z = sigmoid(gi_z + gh_z)
  n = tanh(gi_n + r * gh_n)   h' = (1 - z) * n + z * h

`GRUCell` keeps exactly these four tensors (kernels transposed to
`[in, 3*hidden]`), so PyTorch weights load without any arithmetic, and it
exposes `input_gates` separately so callers can compute `gi` for a whole
sequence in one matmul before the recurrent scan. It is a flax
`RNNCellBase`: `nn.RNN(GRUCell(input_dim, hidden_dim))` scans it.
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


class GRUCell(nn.RNNCellBase):
  """GRU cell with PyTorch's gate order and biases.

  Parameters: `input_kernel [input_dim, 3*hidden]`, `input_bias [3*hidden]`,
  `recurrent_kernel [hidden, 3*hidden]`, `recurrent_bias [3*hidden]`, gates
  in the order (r, z, n) (PyTorch's `weight_ih_l0.T`, `bias_ih_l0`, ...).
  Like flax's own cells, `cell(h, x)` returns `(h', h')` and it plugs into
  `nn.RNN` (`initialize_carry`, `num_feature_axes`). Inside `jax.shard_map`
  give `nn.RNN` an `initial_carry` typed like the inputs,
  `parallel.varying_like(cell.initialize_carry(rng, x[:, 0].shape), x)`: the
  zeros `initialize_carry` makes are invariant over the mesh.

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

  def setup(self) -> None:
    init = weight_init(self.init_std)
    zeros = nn.initializers.zeros_init()
    h3 = 3 * self.hidden_dim
    self.input_kernel = self.param("input_kernel", init, (self.input_dim, h3), self.param_dtype)
    self.input_bias = self.param("input_bias", zeros, (h3,), self.param_dtype)
    self.recurrent_kernel = self.param("recurrent_kernel", init, (self.hidden_dim, h3),
                                       self.param_dtype)
    self.recurrent_bias = self.param("recurrent_bias", zeros, (h3,), self.param_dtype)

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
    """The zero state `[*batch, hidden]` for inputs of shape `[*batch, input_dim]`
    (`rng` is unused: the state starts at zero, as in PyTorch)."""
    del rng
    return jnp.zeros(tuple(input_shape[:-1]) + (self.hidden_dim,), jnp.float32)

  @property
  def num_feature_axes(self) -> int:
    """The input has one feature axis (the last)."""
    return 1

  def input_gates(self, x_xD: jax.Array) -> jax.Array:
    """`x W_ih + b_ih`: `[..., input_dim] -> [..., 3*hidden]` (any leading dims)."""
    return dense(x_xD, self.input_kernel, self.input_bias, self.dtype)

  def hidden_gates(self, h_BxH: jax.Array) -> jax.Array:
    """`h W_hh + b_hh`: `[..., hidden] -> [..., 3*hidden]`."""
    return dense(h_BxH, self.recurrent_kernel, self.recurrent_bias, self.dtype)

  def __call__(self, h_BxH: jax.Array, x_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step from the raw input `[..., input_dim]`: returns `(h', h')`, the
    new state `[..., hidden]` as carry and as output (flax's cell protocol)."""
    if x_BxD.shape[-1] != self.input_dim:
      raise ValueError(f"GRUCell: input has {x_BxD.shape[-1]} features but "
                       f"input_dim={self.input_dim}")
    if h_BxH.shape[-1] != self.hidden_dim:
      raise ValueError(f"GRUCell: state has {h_BxH.shape[-1]} features but "
                       f"hidden_dim={self.hidden_dim}")
    h_new = gru_update(self.input_gates(x_BxD), self.hidden_gates(h_BxH), h_BxH)
    return h_new, h_new


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Any) -> jax.Array:
  """`x @ kernel (+ bias)` over the last axis, in `dtype` with float32 results."""
  y = jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y


