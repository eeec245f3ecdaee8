"""optax optimiser: global-norm clipping, Adam/AdamW and a learning-rate schedule.

Reduce-on-plateau works on the validation loss, which only the host sees:
the host keeps a `Plateau` record and the train step multiplies the updates
by `TrainState.lr_scale`, so the schedule stays a pure function of the step.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax


def schedule(name: str, learning_rate: float, warmup_steps: int = 0,
             total_steps: int = 1) -> optax.Schedule:
  """'constant', 'cosine' (linear warmup then cosine to 0) or 'rsqrt'
  (linear warmup then `lr * sqrt(warmup / step)`)."""
  warmup_steps = max(int(warmup_steps), 0)
  if name == "constant":
    if warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, learning_rate, warmup_steps),
           optax.constant_schedule(learning_rate)], [warmup_steps])
    return optax.constant_schedule(learning_rate)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                              max(total_steps, warmup_steps + 1))
  if name == "rsqrt":
    w = max(warmup_steps, 1)
    return lambda step: learning_rate * _rsqrt_factor(step, w)
  raise ValueError(f"unknown schedule {name!r}; use constant, cosine or rsqrt")


def _rsqrt_factor(step, warmup):
  step = jnp.asarray(step, jnp.float32) + 1.0
  return jnp.where(step < warmup, step / warmup, jnp.sqrt(warmup / step))


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, schedule_name: str = "constant",
                   warmup_steps: int = 0, total_steps: int = 1, clip_norm: float = 1.0,
                   weight_decay: float = 0.0, b2: float = 0.999) -> optax.GradientTransformation:
  """`clip_by_global_norm(clip_norm)` then Adam or AdamW with the schedule."""
  lr = schedule(schedule_name, learning_rate, warmup_steps, total_steps)
  if name == "adam":
    opt = optax.adam(lr, b2=b2)
  elif name == "adamw":
    opt = optax.adamw(lr, b2=b2, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer {name!r}; use adam or adamw")
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
  return optax.chain(*parts, opt)


@dataclasses.dataclass
class Plateau:
  """Host-side reduce-on-plateau on the validation loss.

  After `patience` evaluations without a relative improvement of
  `threshold`, the scale is multiplied by `factor` (never below `min_scale`).
  """

  factor: float = 0.5
  patience: int = 2
  threshold: float = 1e-3
  min_scale: float = 1e-3
  best: float = float("inf")
  bad_evals: int = 0
  scale: float = 1.0

  def update(self, val_loss: float) -> float:
    if val_loss < self.best * (1.0 - self.threshold):
      self.best, self.bad_evals = val_loss, 0
    else:
      self.bad_evals += 1
      if self.bad_evals > self.patience:
        self.scale = max(self.scale * self.factor, self.min_scale)
        self.bad_evals = 0
    return self.scale
