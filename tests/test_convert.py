"""Parity with the PyTorch port of the tutorial model (skipped without torch)."""

import numpy as np
import pytest
from conftest import require_torch

torch = require_torch()

import jax.numpy as jnp  # noqa: E402

from flax_attn import Seq2Seq  # noqa: E402
from flax_attn.convert import params_from_torch  # noqa: E402
from flax_attn.greedy import greedy_decode  # noqa: E402
from flax_attn.reference import torch_seq2seq  # noqa: E402

PAD, BOS, EOS = 1, 2, 3


def _batch(rng, batch=5, src_len=9, trg_len=7, src_vocab=40, trg_vocab=35):
  lengths = np.array([9, 3, 6, 1, 8][:batch])
  src = rng.integers(4, src_vocab, (batch, src_len))
  src[np.arange(src_len)[None, :] >= lengths[:, None]] = PAD
  trg = rng.integers(4, trg_vocab, (batch, trg_len))
  trg[:, 0] = BOS
  return src, lengths, trg


@pytest.fixture(scope="module")
def models():
  tmodel = torch_seq2seq.build(src_vocab=40, trg_vocab=35, emb=12, enc_hid=16, dec_hid=20,
                               seed=0, init_std=0.3).eval()
  config, params = params_from_torch(tmodel.state_dict(), pad_id=PAD)
  return tmodel, config, params


def test_config_inferred(models):
  _, config, _ = models
  assert (config.src_vocab_size, config.trg_vocab_size, config.emb_dim, config.enc_hidden,
          config.dec_hidden, config.attention_dim) == (40, 35, 12, 16, 20, 20)


def test_logits_match_torch(models):
  tmodel, config, params = models
  src, lengths, trg = _batch(np.random.default_rng(0))
  with torch.no_grad():
    ref = tmodel(torch.tensor(src.T), torch.tensor(lengths), torch.tensor(trg.T),
                 teacher_forcing_ratio=1.0)          # [trg_len, batch, vocab], ref[0] = 0
  ref = ref.numpy().transpose(1, 0, 2)[:, 1:]
  ours = Seq2Seq(config).apply({"params": params}, jnp.asarray(src), jnp.asarray(lengths),
                               jnp.asarray(trg[:, :-1]))
  assert np.abs(ref).max() > 0.5  # weights large enough for a meaningful comparison
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)


def test_greedy_matches_torch(models):
  tmodel, config, params = models
  src, lengths, _ = _batch(np.random.default_rng(1))
  ref = tmodel.greedy(torch.tensor(src.T), torch.tensor(lengths), BOS, max_len=8).numpy()
  ours = greedy_decode(config, params, src, lengths, max_len=8)
  # Ours pads after the first EOS; compare up to it.
  live = np.arange(8)[None, :] < np.asarray(ours.lengths)[:, None]
  np.testing.assert_array_equal(np.where(live, np.asarray(ours.tokens), -1),
                                np.where(live, ref, -1))


def test_wrong_state_dict_names_key(models):
  tmodel, _, _ = models
  sd = dict(tmodel.state_dict())
  del sd["decoder.fc_out.bias"]
  with pytest.raises(ValueError, match="decoder.fc_out.bias"):
    params_from_torch(sd)
  sd = dict(tmodel.state_dict())
  sd["decoder.rnn.weight_hh_l0"] = torch.zeros(3, 3)
  with pytest.raises(ValueError, match="decoder.rnn.weight_hh_l0"):
    params_from_torch(sd)
  sd = dict(tmodel.state_dict())
  sd["decoder.extra.weight"] = torch.zeros(3)
  with pytest.raises(ValueError, match="decoder.extra.weight"):
    params_from_torch(sd)
