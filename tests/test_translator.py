"""Translator: a sentence's output does not depend on its batch companions."""

import jax
import numpy as np
import pytest

from flax_attn import Seq2SeqConfig, init_params
from flax_attn.translator import Translator

EOS = 3


@pytest.fixture(scope="module")
def translator():
  """An untrained model that never emits EOS (its EOS logit bias is -1e4),
  so the length limits alone decide where outputs end."""
  config = Seq2SeqConfig(src_vocab_size=12, trg_vocab_size=9, emb_dim=8, enc_hidden=8,
                         dec_hidden=8, attn_dim=8, dropout=0.0, init_std=0.5)
  params = init_params(config, jax.random.PRNGKey(3))
  params["decoder"]["out_bias"] = params["decoder"]["out_bias"].at[EOS].set(-1e4)
  return Translator(config, params, None, None)


def _sentence(n, seed):
  ids = np.random.default_rng(seed).integers(4, 12, n - 1)
  return np.append(ids, EOS).astype(np.int32)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_alone_equals_inside_a_batch_of_long_sentences(translator, beam_size):
  short = _sentence(3, seed=0)
  longs = [_sentence(40, seed=s) for s in range(1, 6)]
  alone = translator.translate_ids([short], beam_size=beam_size)[0]
  batched = translator.translate_ids(longs[:2] + [short] + longs[2:], beam_size=beam_size)
  assert batched[2] == alone
  # Each sentence runs to its own limit, ceil(1.5 * n + 10): 15 tokens for n = 3,
  # 70 for n = 40 (without per-sentence limits the short one would get 72 here).
  assert len(alone) == 15
  assert [len(o) for o in batched] == [70, 70, 15, 70, 70, 70]


@pytest.mark.parametrize("n, rows", [(1, 1), (3, 4), (5, 8), (200, 128)])
def test_small_inputs_are_not_padded_to_a_full_batch(translator, monkeypatch, n, rows):
  from flax_attn import translator as translator_module
  seen = []
  real = translator_module.greedy_decode

  def spy(config, params, src, lengths, max_len):
    seen.append(src.shape[0])
    return real(config, params, src, lengths, max_len)

  monkeypatch.setattr(translator_module, "greedy_decode", spy)
  out = translator.translate_ids([_sentence(3, seed=s) for s in range(n)])
  assert len(out) == n and set(seen) == {rows}


def test_scored_beam_of_one_is_the_greedy_output(translator):
  sentences = [_sentence(n, seed=s) for s, n in enumerate([3, 7, 12, 5])]
  greedy = translator.translate_ids(sentences)
  scored = translator.translate_ids_nbest(sentences, beam_size=1)
  assert [hyps[0][0] for hyps in scored] == greedy
  assert all(len(h) == 1 and np.isfinite(h[0][1]) for h in scored)


def test_n_best_are_distinct_and_best_first(translator):
  nbest = translator.translate_ids_nbest([_sentence(6, seed=9)], beam_size=4, n_best=3)[0]
  assert len(nbest) == 3
  assert len({tuple(ids) for ids, _ in nbest}) == 3
  scores = [score for _, score in nbest]
  assert scores == sorted(scores, reverse=True)
  with pytest.raises(ValueError, match=r"n_best must be between 1 and beam_size \(2\)"):
    translator.translate_ids_nbest([_sentence(6, seed=9)], beam_size=2, n_best=3)


def test_bfloat16_inference_option(translator):
  bf16 = Translator(translator.config, translator.params, None, None, dtype="bfloat16")
  assert bf16.config.dtype == bf16.config.param_dtype == "bfloat16"
  assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jax.numpy.dtype("bfloat16")}
  assert translator.config.dtype == "float32"  # the float32 translator is untouched
  sentences = [_sentence(n, seed=s) for s, n in enumerate([3, 7, 12])]
  # Same lengths: the per-sentence limits decide them for this model (it never ends).
  out32, out16 = translator.translate_ids(sentences), bf16.translate_ids(sentences)
  assert [len(o) for o in out16] == [len(o) for o in out32]
  with pytest.raises(ValueError, match="dtype must be one of"):
    Translator(translator.config, translator.params, None, None, dtype="float16")


def test_params_live_on_the_device(translator):
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(translator.params))


def test_a_loaded_runs_decode_group_is_the_default(translator, monkeypatch):
  """A checkpoint's config says how to decode (beam 3, alpha 1.0 here): the
  methods use it when their arguments are left out, and an argument overrides."""
  from flax_attn import beam as beam_module
  calls = []
  real = beam_module.beam_search

  def spy(*args, **kw):
    calls.append((kw["beam_size"], kw["alpha"]))
    return real(*args, **kw)

  monkeypatch.setattr(beam_module, "beam_search", spy)
  meta = {"experiment": {"decode": {"beam_size": 3, "alpha": 1.0}}}
  t = Translator(translator.config, translator.params, None, None, meta=meta)
  assert t.decode.beam_size == 3
  t.translate_ids([_sentence(5, seed=1)])
  assert calls == [(3, 1.0)]
  t.translate_ids([_sentence(5, seed=1)], alpha=0.0)
  assert calls[-1] == (3, 0.0)
  assert t.translate_ids([_sentence(5, seed=1)], beam_size=1) == translator.translate_ids(
      [_sentence(5, seed=1)])
  assert len(calls) == 2  # beam_size=1: greedy, no beam search


def test_bad_inputs_to_translate_are_clear(translator):
  with pytest.raises(TypeError, match="list of strings, got NoneType"):
    translator.translate(None)
  with pytest.raises(TypeError, match="not a single string"):
    translator.translate("abc")


def test_attention_of_an_empty_sentence_is_empty_like_its_translation(translator):
  src_tokens, trg_tokens, weights = translator.attention("  ")
  assert src_tokens == [] and trg_tokens == [] and weights.shape == (0, 0)
