"""Pure training and evaluation steps: what runs on the device.

`train_step(state, batch, ...)` is one optimisation step on this device's
share of a global batch, `train_step_accumulate` adds its metrics to
device-side running sums (fetched only every `log_every_steps`), and
`eval_step` sums a batch's NLL. Static settings are bound with
`functools.partial`; `flax_attn.parallel.pmap` applies `jax.pmap` (the only
place it is applied). Losses travel as sums with a token count, summed over
devices, so the update does not depend on how a global batch is split over
devices or processes (with dropout off; dropout masks are drawn per device).
A step whose loss or gradient is not finite leaves parameters and optimizer
state unchanged (`ok` False) and is counted by `accumulate`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from flax_attn import parallel
from flax_attn.config import Seq2SeqConfig
from flax_attn.loss import cross_entropy_sums, projected_cross_entropy_sums, row_nll_sums
from flax_attn.model import Seq2Seq, init_params


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is a raw uint32[2] key; `lr_scale`
  multiplies the updates (reduce-on-plateau)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  lr_scale: jax.Array


def create_train_state(model_config: Seq2SeqConfig, tx: optax.GradientTransformation,
                       seed: int) -> TrainState:
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(init_rng, model_config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=rng, lr_scale=jnp.ones((), jnp.float32))


def train_step(state: TrainState, batch: dict, *, model_config: Seq2SeqConfig,
               tx: optax.GradientTransformation, teacher_forcing: float = 1.0,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One optimisation step on this device's share of a global batch (inside pmap).

  Returns the new state and metrics summed over all devices: loss_sum,
  nll_sum, weight_sum, grad_norm, ok. If the loss or gradient is not finite
  (`ok` False), parameters, optimizer state and lr scale are unchanged and
  only the step counter advances (that batch is skipped).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), parallel.device_index())
  model = Seq2Seq(model_config)

  def loss_fn(params):
    inputs = (batch["src"], batch["src_lengths"], batch["trg_in"])
    if teacher_forcing >= 1.0:  # the output projection fused with the loss, in chunks
      features = model.apply({"params": params}, *inputs, train=True, rngs={"dropout": rng},
                             method=Seq2Seq.teacher_forced_features)
      dec = params["decoder"]
      loss_sum, nll_sum, weight_sum = projected_cross_entropy_sums(
          features, dec["out_kernel"], dec["out_bias"], batch["trg_out"], batch["weights"],
          label_smoothing, model_config.compute_dtype)
    else:
      logits = model.apply({"params": params}, *inputs, train=True,
                           teacher_forcing=teacher_forcing, rngs={"dropout": rng})
      loss_sum, nll_sum, weight_sum = cross_entropy_sums(logits, batch["trg_out"],
                                                         batch["weights"], label_smoothing)
    return loss_sum, (nll_sum, weight_sum)

  # vary: under jax.shard_map each device differentiates its own share (as under
  # pmap, where it is a no-op); the psum below then sums them once.
  (loss_sum, (nll_sum, weight_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      parallel.vary(state.params))
  total_weight = parallel.psum(weight_sum)
  denom = jnp.maximum(total_weight, 1.0)
  grads = jax.tree.map(lambda g: parallel.psum(g) / denom, grads)
  loss = parallel.psum(loss_sum) / denom
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
  updated = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {"loss_sum": loss * denom, "nll_sum": parallel.psum(nll_sum),
             "weight_sum": total_weight, "grad_norm": grad_norm, "ok": ok}
  return new_state, metrics


# ---- metrics summed on the device between fetches --------------------------------------

def init_metrics() -> dict:
  """Device-side running sums of one log window, plus the rejection streak
  (`streak`: consecutive rejected steps now; `stop_step`: step at which the
  streak first reached the limit, 0 if never)."""
  f, i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
  return {"loss_sum": f, "nll_sum": f, "weight_sum": f, "grad_norm_sum": f, "steps": i,
          "rejected": i, "streak": i, "stop_step": i}


def accumulate(acc: dict, m: dict, step: jax.Array, max_nonfinite: int) -> dict:
  ok = m["ok"]
  keep = lambda x: jnp.where(ok, x, 0.0)  # a rejected step's loss is NaN: leave it out
  streak = jnp.where(ok, 0, acc["streak"] + 1)
  hit = (streak >= max_nonfinite) & (acc["stop_step"] == 0)
  return {"loss_sum": acc["loss_sum"] + keep(m["loss_sum"]),
          "nll_sum": acc["nll_sum"] + keep(m["nll_sum"]),
          "weight_sum": acc["weight_sum"] + keep(m["weight_sum"]),
          "grad_norm_sum": acc["grad_norm_sum"] + keep(m["grad_norm"]),
          "steps": acc["steps"] + ok.astype(jnp.int32),
          "rejected": acc["rejected"] + (~ok).astype(jnp.int32),
          "streak": streak, "stop_step": jnp.where(hit, step, acc["stop_step"])}


def train_step_accumulate(state: TrainState, acc: dict, batch: dict, *, max_nonfinite: int = 20,
                          **step_kwargs) -> tuple[TrainState, dict]:
  """`train_step` plus `accumulate`, in one device program (inside pmap)."""
  new_state, m = train_step(state, batch, **step_kwargs)
  return new_state, accumulate(acc, m, new_state.step, max_nonfinite)


def eval_step(params: Any, batch: dict, *, model_config: Seq2SeqConfig,
              free_running: bool = False) -> dict:
  """Summed NLL and token count of a batch (teacher forced, or the model's
  own argmax fed back when `free_running`), summed over devices, and the
  same per row of the global batch (`nll_B`, `weight_B`)."""
  logits = Seq2Seq(model_config).apply({"params": params}, batch["src"], batch["src_lengths"],
                                       batch["trg_in"], train=False,
                                       teacher_forcing=0.0 if free_running else 1.0)
  nll_B, weight_B = row_nll_sums(logits, batch["trg_out"], batch["weights"])
  return {"nll_sum": parallel.psum(jnp.sum(nll_B)), "weight_sum": parallel.psum(jnp.sum(weight_B)),
          "nll_B": parallel.all_gather(nll_B), "weight_B": parallel.all_gather(weight_B)}
