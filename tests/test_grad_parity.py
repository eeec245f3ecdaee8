"""Loss, gradient and optimiser-step parity with PyTorch autograd.

The PyTorch port of the tutorial (`flax_attn.reference.torch_seq2seq`) with
random weights, converted by `flax_attn.convert.params_from_torch`, on a
padded batch of mixed source and target lengths, teacher forcing 1 and
dropout off:

* the loss is the token mean of the cross entropy over real target tokens
  (the tutorial's `CrossEntropyLoss(ignore_index=PAD)`; ours
  `loss.cross_entropy_sums` divided by the token count) and agrees to 1e-5
  relative;
* the gradient of every parameter agrees with PyTorch's, per tensor:
  `||g_jax - g_torch|| / max(||g_torch||, 1e-12) <= 1e-4`;
* steps of `clip_grad_norm_(1.0)` + `torch.optim.Adam(lr)` agree with
  `flax_attn.steps.train_step` (under `parallel.pmap`, one device) with
  `make_optimizer("adam", lr, clip_norm=1.0)`: per tensor, the parameter
  change of each step agrees to 1e-4 relative (`STEP_RTOL`), the parameters
  to 5e-6 absolute, the reported loss and gradient norm to 1e-5 relative.

Gradients are compared in PyTorch's layout: `_to_torch_layout` is the inverse
of `convert.py`'s mapping (kernels transposed back, the attention's `W` and `U`
concatenated back into one Linear, `v` given its leading axis back).
"""

import functools

import numpy as np
import pytest
from conftest import require_torch

torch = require_torch()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from flax_attn import Seq2Seq, parallel  # noqa: E402
from flax_attn.convert import params_from_torch  # noqa: E402
from flax_attn.loss import cross_entropy_sums  # noqa: E402
from flax_attn.optimizer import make_optimizer  # noqa: E402
from flax_attn.reference import torch_seq2seq  # noqa: E402

PAD, BOS, EOS = 1, 2, 3
SIZES = dict(src_vocab=30, trg_vocab=25, emb=6, enc_hid=8, dec_hid=10)
GRAD_RTOL = 1e-4   # per tensor; float32 on both sides, observed <= 1e-5
STEP_RTOL = 1e-4   # per tensor, the change one optimiser step makes; observed <= 2e-5
TINY = 1e-12


def _rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), TINY))


def _batch(seed, batch=5, src_len=9, trg_len=8):
  """Project layout (`input_pipeline.pad_batch`): mixed lengths, PAD after
  each row's end, `trg_in` = BOS + tokens, `trg_out` = tokens + EOS."""
  rng = np.random.default_rng(seed)
  src_lengths = np.array([9, 3, 6, 1, 8][:batch], np.int32)
  trg_lengths = np.array([4, 7, 1, 6, 3][:batch])          # tokens before EOS
  src = rng.integers(4, SIZES["src_vocab"], (batch, src_len)).astype(np.int32)
  src[np.arange(src_len)[None, :] >= src_lengths[:, None]] = PAD
  full = np.full((batch, trg_len + 1), PAD, np.int32)       # BOS tokens EOS PAD...
  full[:, 0] = BOS
  for r, n in enumerate(trg_lengths):
    full[r, 1:n + 1] = rng.integers(4, SIZES["trg_vocab"], n)
    full[r, n + 1] = EOS
  return {"src": src, "src_lengths": src_lengths, "trg_in": full[:, :-1],
          "trg_out": full[:, 1:], "weights": (full[:, 1:] != PAD).astype(np.float32)}


def _torch_loss(tmodel, b):
  """The tutorial's training loss: outputs[1:] against trg[1:], PAD ignored."""
  trg = np.concatenate([b["trg_in"], b["trg_out"][:, -1:]], axis=1)   # BOS ... [batch, T+1]
  out = tmodel(torch.tensor(b["src"].T).long(), torch.tensor(b["src_lengths"]).long(),
               torch.tensor(trg.T).long(), teacher_forcing_ratio=1.0)
  return torch.nn.functional.cross_entropy(out[1:].reshape(-1, out.shape[-1]),
                                           torch.tensor(trg.T[1:]).long().reshape(-1),
                                           ignore_index=PAD)


def _jax_loss(config, params, b):
  logits = Seq2Seq(config).apply({"params": params}, b["src"], b["src_lengths"], b["trg_in"])
  loss_sum, _, weight_sum = cross_entropy_sums(logits, b["trg_out"], b["weights"])
  return loss_sum / weight_sum


def _to_torch_layout(params, enc_layers: int) -> dict[str, np.ndarray]:
  """Inverse of `convert.params_from_torch`: a Flax tree (parameters or
  gradients) as the tutorial's `state_dict` names and shapes."""
  p = jax.tree.map(np.asarray, params)
  enc, dec = p["encoder"], p["decoder"]
  out = {"encoder.embedding.weight": enc["embedding"]["embedding"]}

  def gru(prefix, suffix, cell):
    out[f"{prefix}.weight_ih_{suffix}"] = cell["input_kernel"].T
    out[f"{prefix}.weight_hh_{suffix}"] = cell["recurrent_kernel"].T
    out[f"{prefix}.bias_ih_{suffix}"] = cell["input_bias"]
    out[f"{prefix}.bias_hh_{suffix}"] = cell["recurrent_bias"]

  for i in range(enc_layers):
    gru("encoder.rnn", f"l{i}", enc[f"layer_{i}"]["fwd"])
    gru("encoder.rnn", f"l{i}_reverse", enc[f"layer_{i}"]["bwd"])
  out["encoder.fc.weight"] = enc["bridge"]["kernel"].T
  out["encoder.fc.bias"] = enc["bridge"]["bias"]
  att = dec["attention"]
  out["decoder.attention.attn.weight"] = np.concatenate(
      [att["query_kernel"].T, att["key_kernel"].T], axis=1)
  out["decoder.attention.attn.bias"] = att["key_bias"]
  out["decoder.attention.v.weight"] = att["v"][None, :]
  out["decoder.embedding.weight"] = dec["embedding"]["embedding"]
  gru("decoder.rnn", "l0", dec["gru"])
  out["decoder.fc_out.weight"] = dec["out_kernel"].T
  out["decoder.fc_out.bias"] = dec["out_bias"]
  return out


def _models(enc_layers):
  tmodel = torch_seq2seq.build(**SIZES, dropout=0.0, pad_id=PAD, seed=enc_layers, init_std=0.5,
                               enc_layers=enc_layers).eval()
  config, params = params_from_torch(tmodel.state_dict(), pad_id=PAD, dropout=0.0)
  assert config.enc_layers == enc_layers
  return tmodel, config, params


def _torch_params(tmodel) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in tmodel.named_parameters()}


@pytest.mark.parametrize("enc_layers", [1, 2])
def test_layout_inverse_is_exact(enc_layers):
  tmodel, _, params = _models(enc_layers)
  back = _to_torch_layout(params, enc_layers)
  ref = _torch_params(tmodel)
  assert set(back) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(back[k], ref[k], err_msg=k)


@pytest.mark.parametrize("enc_layers", [1, 2])
def test_loss_and_every_gradient_match_torch(enc_layers):
  """Loss to 1e-5 and each parameter's gradient to `GRAD_RTOL` = 1e-4
  (relative error = ||g_jax - g_torch|| / max(||g_torch||, 1e-12), per tensor)."""
  tmodel, config, params = _models(enc_layers)
  b = _batch(0)
  assert 0 < b["weights"].sum() < b["weights"].size          # some targets are padded
  loss_t = _torch_loss(tmodel, b)
  tmodel.zero_grad()
  loss_t.backward()
  g_torch = {k: v.grad.numpy() for k, v in tmodel.named_parameters()}

  loss_j, g_jax = jax.jit(jax.value_and_grad(_jax_loss, argnums=1), static_argnums=0)(
      config, params, b)
  assert _rel_err(loss_j, loss_t.item()) <= 1e-5, (float(loss_j), loss_t.item())
  g_jax = _to_torch_layout(g_jax, enc_layers)
  assert set(g_jax) == set(g_torch)
  errors = {k: _rel_err(g_jax[k], g_torch[k]) for k in g_torch}
  bad = {k: e for k, e in errors.items() if not e <= GRAD_RTOL}
  assert not bad, f"relative gradient error above {GRAD_RTOL}: {bad}"
  # Not vacuous: the gradients are non-zero.
  assert all(np.linalg.norm(g) > 1e-6 for g in g_torch.values())


@pytest.mark.slow
@pytest.mark.parametrize("enc_layers", [1, 2])
def test_optimizer_steps_match_torch(enc_layers):
  """Two steps of clip 1.0 + Adam through `train_step`: each step's parameter
  change per tensor to `STEP_RTOL` = 1e-4 relative, the parameters to 5e-6,
  the loss and the (pre-clip) gradient norm to 1e-5 relative."""
  from flax_attn.steps import create_train_state, train_step
  lr = 1e-2
  tmodel, config, params = _models(enc_layers)
  topt = torch.optim.Adam(tmodel.parameters(), lr=lr)
  tx = make_optimizer("adam", learning_rate=lr, clip_norm=1.0)
  state = create_train_state(config, tx, seed=0)
  state = state.replace(params=jax.tree.map(jnp.asarray, params),
                        opt_state=tx.init(jax.tree.map(jnp.asarray, params)))
  step = parallel.pmap(functools.partial(train_step, model_config=config, tx=tx))
  state = parallel.replicate(state, 1)

  for i in range(2):
    b = _batch(10 + i)
    before = _torch_params(tmodel)
    ours_before = _to_torch_layout(parallel.unreplicate(state.params), enc_layers)
    topt.zero_grad()
    loss_t = _torch_loss(tmodel, b)
    loss_t.backward()
    norm_t = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0).item()
    assert norm_t > 1.0                                       # clipping is exercised
    topt.step()
    after = _torch_params(tmodel)

    state, metrics = step(state, parallel.shard(b, 1))
    m = parallel.unreplicate(metrics)
    assert bool(m["ok"])
    assert _rel_err(m["loss_sum"] / m["weight_sum"], loss_t.item()) <= 1e-5
    assert _rel_err(m["grad_norm"], norm_t) <= 1e-5
    ours = _to_torch_layout(parallel.unreplicate(state.params), enc_layers)
    for k in after:
      delta_t = after[k] - before[k]
      assert np.linalg.norm(delta_t) > 0, k
      err = _rel_err(ours[k] - ours_before[k], delta_t)
      assert err <= STEP_RTOL, f"step {i}: {k} update differs by {err:.2e} (relative)"
      np.testing.assert_allclose(ours[k], after[k], rtol=0, atol=5e-6, err_msg=k)
