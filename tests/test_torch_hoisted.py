"""`flax_attn.reference.torch_hoisted` computes the tutorial port's function with
its weights.

The hoisted peer (keys once per sentence, embedding gates before and the
output projection after the loop) against `flax_attn.reference.torch_seq2seq`
on a padded batch of mixed source and target lengths, random weights (std 0.5, so
that logits and gradients are O(1) and a wrong piece shows above float32
tolerances): eval-mode logits, every parameter's gradient, greedy tokens, and
train-mode dropout under one seed where the CPU's dropout stream allows.
Mutants (a wrong key matrix, swapped GRU gates) show the comparisons can fail.
"""

import numpy as np
import pytest
from conftest import require_torch

torch = require_torch()

import torch.nn.functional as F  # noqa: E402

from flax_attn.reference import torch_hoisted, torch_seq2seq  # noqa: E402
from flax_attn.reference.torch_hoisted import HoistedSeq2Seq  # noqa: E402

PAD, BOS, EOS = 1, 2, 3
SIZES = dict(src_vocab=30, trg_vocab=29, emb=8, enc_hid=16, dec_hid=16)
SRC_LENGTHS = [7, 3, 5, 1]
TRG_LENGTHS = [5, 2, 4, 1]   # tokens before EOS


def _models(dropout=0.0, enc_layers=1, seed=0):
  tutorial = torch_seq2seq.build(**SIZES, dropout=dropout, pad_id=PAD, seed=seed, init_std=0.5,
                                 enc_layers=enc_layers)
  return tutorial, HoistedSeq2Seq(tutorial)


def _batch(seed=0):
  """Time-major `src [S, B]`, `src_len [B]`, `trg [T+1, B]` (BOS tokens EOS PAD...)."""
  rng = np.random.default_rng(seed)
  batch, s_max, t_max = len(SRC_LENGTHS), max(SRC_LENGTHS), max(TRG_LENGTHS) + 1
  src = rng.integers(4, SIZES["src_vocab"], (batch, s_max))
  src[np.arange(s_max)[None, :] >= np.array(SRC_LENGTHS)[:, None]] = PAD
  trg = np.full((batch, t_max + 1), PAD)
  trg[:, 0] = BOS
  for r, n in enumerate(TRG_LENGTHS):
    trg[r, 1:n + 1] = rng.integers(4, SIZES["trg_vocab"], n)
    trg[r, n + 1] = EOS
  return (torch.from_numpy(src.T.copy()), torch.tensor(SRC_LENGTHS),
          torch.from_numpy(trg.T.copy()))


def _loss(model, src, src_len, trg):
  """The benchmark's training loss: outputs[1:] against trg[1:], PAD ignored."""
  out = model(src, src_len, trg, teacher_forcing_ratio=1.0)
  return F.cross_entropy(out[1:].reshape(-1, out.shape[-1]), trg[1:].reshape(-1),
                         ignore_index=PAD)


def _grads(model, loss_fn):
  model.zero_grad(set_to_none=True)
  loss_fn().backward()
  return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_shares_the_tutorial_parameters():
  tutorial, hoisted = _models()
  assert list(hoisted.state_dict()) == list(tutorial.state_dict())
  for (k, p), (k2, q) in zip(tutorial.named_parameters(), hoisted.named_parameters()):
    assert k == k2 and p is q
  src, src_len, trg = _batch()
  tutorial.eval()
  before = hoisted(src, src_len, trg)
  with torch.no_grad():
    tutorial.decoder.attention.attn.weight.mul_(2.0)   # an update of one is seen by the other
  after = hoisted(src, src_len, trg)
  assert not torch.allclose(before, after)
  torch.testing.assert_close(after, tutorial(src, src_len, trg, teacher_forcing_ratio=1.0))


@pytest.mark.parametrize("enc_layers", [1, 2])
def test_eval_logits_match(enc_layers):
  tutorial, hoisted = _models(enc_layers=enc_layers)
  hoisted.eval()
  src, src_len, trg = _batch()
  with torch.no_grad():
    want = tutorial(src, src_len, trg, teacher_forcing_ratio=1.0)
    got = hoisted(src, src_len, trg)
  assert got.shape == want.shape == (trg.shape[0], trg.shape[1], SIZES["trg_vocab"])
  assert torch.count_nonzero(got[0]) == 0          # the tutorial's dummy outputs[0]
  assert want[1:].abs().mean() > 0.1               # O(1) logits: the comparison has teeth
  torch.testing.assert_close(got, want)


def test_every_gradient_matches():
  tutorial, hoisted = _models()
  tutorial.eval()
  batch = _batch()
  want = _grads(tutorial, lambda: _loss(tutorial, *batch))
  got = _grads(hoisted, lambda: _loss(hoisted, *batch))
  assert set(got) == set(want) == {k for k, _ in tutorial.named_parameters()}
  for k in want:
    assert want[k].abs().max() > 0, k
    torch.testing.assert_close(got[k], want[k], msg=lambda m, k=k: f"{k}: {m}")


def test_greedy_tokens_match():
  tutorial, hoisted = _models()
  hoisted.eval()
  src, src_len, _ = _batch()
  want = tutorial.greedy(src, src_len, BOS, 9)
  got = hoisted.greedy(src, src_len, BOS, 9)
  assert got.shape == (src.shape[1], 9) and got.dtype == torch.long
  assert len(torch.unique(want)) > 2               # not a constant sequence
  torch.testing.assert_close(got, want, rtol=0, atol=0)



def _ban_eos(model):
  with torch.no_grad():
    model.decoder.fc_out.bias[EOS] = -1e9


def test_beam_of_one_is_greedy():
  _, hoisted = _models()
  hoisted.eval()
  _ban_eos(hoisted)
  src, src_len, _ = _batch()
  torch.testing.assert_close(hoisted.beam(src, src_len, BOS, 1, 9),
                             hoisted.greedy(src, src_len, BOS, 9), rtol=0, atol=0)


def test_beam_matches_flax_beam_search_with_eos_banned():
  """The benchmark's PyTorch beam peer decodes what `flax_attn.beam.beam_search`
  decodes with the same weights, beam 4, EOS banned, 9 steps; and beam
  search finds another output than greedy here (the beam does something)."""
  import jax.numpy as jnp

  from flax_attn.beam import beam_search
  from flax_attn.convert import params_from_torch

  _, hoisted = _models()
  hoisted.eval()
  _ban_eos(hoisted)
  src, src_len, _ = _batch()
  got = hoisted.beam(src, src_len, BOS, 4, 9)
  config, params = params_from_torch(hoisted.state_dict(), pad_id=PAD, bos_id=BOS, eos_id=EOS)
  out = beam_search(config, params, jnp.asarray(src.T.numpy()), jnp.asarray(src_len.numpy()),
                    beam_size=4, max_len=9)
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, 0], got.numpy())
  assert not torch.equal(got, hoisted.greedy(src, src_len, BOS, 9))

def _dropout_draws_concatenate() -> bool:
  """Whether one `[T, B, E]` dropout draw equals T `[1, B, E]` draws in turn
  (PyTorch's serial CPU bernoulli; its MKL path on Intel CPUs reseeds per call)."""
  drop, x = torch.nn.Dropout(0.5), torch.ones(3, 4, 8)
  with torch.random.fork_rng():
    torch.manual_seed(0)
    once = drop(x)
    torch.manual_seed(0)
    steps = torch.cat([drop(x[t:t + 1]) for t in range(3)])
  return torch.equal(once, steps)


def test_train_mode_dropout_matches_under_one_seed():
  if not _dropout_draws_concatenate():
    pytest.skip("this CPU's dropout stream is per call (MKL bernoulli): the tutorial's "
                "per-step masks cannot equal the hoisted peer's one draw")
  tutorial, hoisted = _models(dropout=0.5)
  hoisted.train()
  batch = _batch()

  def seeded(model):
    def fn():
      torch.manual_seed(123)
      return _loss(model, *batch)
    return fn

  torch.manual_seed(123)
  want_logits = tutorial(*batch, teacher_forcing_ratio=1.0)
  torch.manual_seed(123)
  got_logits = hoisted(*batch)
  torch.manual_seed(7)
  assert not torch.allclose(hoisted(*batch), got_logits)   # dropout is really on
  torch.testing.assert_close(got_logits, want_logits)
  want, got = _grads(tutorial, seeded(tutorial)), _grads(hoisted, seeded(hoisted))
  for k in want:
    torch.testing.assert_close(got[k], want[k], msg=lambda m, k=k: f"{k}: {m}")


class _WrongKeys(HoistedSeq2Seq):
  """Keys projected with the first 2H columns of the attention Linear, not the last."""

  def _weights(self):
    w = super()._weights()
    w["w_key_Dx2H"] = self.decoder.attention.attn.weight[:, :2 * SIZES["enc_hid"]]
    return w


def _swapped_gates(gi, h, w_hh, b_hh):
  """r and z exchanged."""
  r, z, n = gi.chunk(3, dim=1)
  return _true_gru_cell(torch.cat((z, r, n), dim=1), h, w_hh, b_hh)


_true_gru_cell = torch_hoisted.gru_cell


@pytest.mark.parametrize("mutant", ["wrong_keys", "swapped_gates"])
def test_comparisons_catch_a_mutant(mutant, monkeypatch):
  tutorial, _ = _models()
  tutorial.eval()
  if mutant == "wrong_keys":
    hoisted = _WrongKeys(tutorial)
  else:
    hoisted = HoistedSeq2Seq(tutorial)
    monkeypatch.setattr(torch_hoisted, "gru_cell", _swapped_gates)
  batch = _batch()
  with torch.no_grad(), pytest.raises(AssertionError):
    torch.testing.assert_close(hoisted(*batch), tutorial(*batch, teacher_forcing_ratio=1.0))
  want = _grads(tutorial, lambda: _loss(tutorial, *batch))["decoder.attention.v.weight"]
  got = _grads(hoisted, lambda: _loss(hoisted, *batch))["decoder.attention.v.weight"]
  with pytest.raises(AssertionError):
    torch.testing.assert_close(got, want)
  src, src_len, _ = batch
  assert not torch.equal(hoisted.greedy(src, src_len, BOS, 9),
                         tutorial.greedy(src, src_len, BOS, 9))


def test_only_teacher_forcing_one():
  _, hoisted = _models()
  with pytest.raises(ValueError, match="teacher forcing 1.0"):
    hoisted(*_batch(), teacher_forcing_ratio=0.5)


def test_maybe_compile_falls_back_with_one_line(monkeypatch):
  def broken(fn):
    raise RuntimeError("no backend\nsecond line")

  monkeypatch.setattr(torch, "compile", broken)
  fn = lambda x: x + 1  # noqa: E731
  out, why = torch_hoisted.maybe_compile(fn, torch.ones(2))
  assert out is fn
  assert why == "torch.compile failed: RuntimeError: no backend"
