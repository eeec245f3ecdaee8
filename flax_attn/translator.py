"""`Translator`: a checkpoint plus its tokenizers, turned into `str -> str`."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax_attn import checkpoint as ckpt_lib
from flax_attn import tokenizers as tok_lib
from flax_attn import export as export_lib
from flax_attn.config import Seq2SeqConfig
from flax_attn.decode_config import DecodeConfig, check
from flax_attn.greedy import greedy_decode
from flax_attn.input_pipeline import encode_pairs, eval_batches
from flax_attn.text_input import check_sentences


INFERENCE_DTYPES = ("float32", "bfloat16")


logger = logging.getLogger(__name__)  # "flax_attn.translator"


class Translator:
  """Translates with a trained model.

  Attributes:
    config: the `Seq2SeqConfig`; params: the parameters, placed on the
    default device once (they stay there between calls); src_tokenizer,
    trg_tokenizer; max_src_len: longer inputs are truncated (with a warning)
    to this many tokens including EOS; step: checkpoint step; meta: the
    checkpoint's meta record (experiment config included); decode: the
    `DecodeConfig` its methods use for any decoding argument left None (a
    loaded checkpoint's own config's `decode` group, else greedy).

  `dtype="bfloat16"` (in `__init__` or `load`) decodes with bfloat16 weights
  and matmuls (the recurrent state and softmax stay float32). Its speed
  depends on the hardware (on a CPU without bfloat16 instructions it can be
  slower than float32); its speed and quality cost are measured in the
  README, "bfloat16 inference".
  """

  def __init__(self, config: Seq2SeqConfig, params, src_tokenizer, trg_tokenizer,
               max_src_len: int = 256, step: int | None = None, meta: dict | None = None,
               dtype: str | None = None, decode: DecodeConfig | None = None):
    if dtype is not None:
      if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")
      config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
      params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params)
    self.config, self.params = config, jax.device_put(params)
    self.src_tokenizer, self.trg_tokenizer = src_tokenizer, trg_tokenizer
    self.max_src_len, self.step, self.meta = max_src_len, step, meta or {}
    self.decode = decode if decode is not None else DecodeConfig.from_experiment(
        self.meta.get("experiment"))

  @classmethod
  def load(cls, workdir_or_checkpoint_dir: str | os.PathLike, step: int | None = None,
           which: str = "latest", dtype: str | None = None) -> "Translator":
    """Loads a workdir (its latest, or `which="best"`), one step directory, or
    an export (`flax_attn.export`: its files are checked against its manifest;
    `step` and `which` do not apply; a bfloat16 export decodes in bfloat16
    unless `dtype` says otherwise)."""
    if export_lib.is_export(workdir_or_checkpoint_dir):
      if step is not None or which != "latest":
        raise ValueError(f"{workdir_or_checkpoint_dir} is an export: it holds one set of "
                         f"parameters, so step and which do not apply")
      step, params, meta = export_lib.load_export(workdir_or_checkpoint_dir)
      dtype = dtype or (meta["dtype"] if meta.get("dtype") != "float32" else None)
    else:
      step, params, meta = ckpt_lib.load_for_inference(workdir_or_checkpoint_dir, step, which)
    try:
      config = Seq2SeqConfig.from_dict(meta["model_config"])
      src_tok = tok_lib.from_json(meta["tokenizers"]["src"])
      trg_tok = tok_lib.from_json(meta["tokenizers"]["trg"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{workdir_or_checkpoint_dir} is not a flax_attn checkpoint: {e}") from None
    max_src_len = int(meta.get("experiment", {}).get("max_src_len", 256))
    return cls(config, params, src_tok, trg_tok, max_src_len, step, meta, dtype)

  def export_serving(self, out: str | os.PathLike, src_widths: Sequence[int] | None = None,
                     beam_size: int | None = None, platforms: Sequence[str] | None = None) -> dict:
    """Writes the greedy and beam decoders, with these parameters and decoding
    settings, as serialized StableHLO to the new folder `out`
    (`flax_attn.serving.export_serving`); `flax_attn.serving.ServedTranslator`
    runs it without the model's code."""
    from flax_attn import serving
    return serving.export_serving(self, out, src_widths, beam_size,
                                  serving.DEFAULT_PLATFORMS if platforms is None else platforms)

  def _max_len(self, src_len: int, ratio: float, offset: int) -> int:
    return max(1, int(math.ceil(ratio * src_len + offset)))

  def settings(self, beam_size: int | None = None, alpha: float | None = None,
               max_len_ratio: float | None = None,
               max_len_offset: int | None = None) -> DecodeConfig:
    """`self.decode` with the arguments that are not None put in (checked)."""
    return self.decode.replace(beam_size=beam_size, alpha=alpha, max_len_ratio=max_len_ratio,
                               max_len_offset=max_len_offset)

  def translate_ids(self, src_ids: Sequence[np.ndarray], beam_size: int | None = None,
                    alpha: float | None = None, max_len_ratio: float | None = None,
                    max_len_offset: int | None = None,
                    batch_size: int = 128, on_batch=None) -> list[list[int]]:
    """Token ids (EOS included in the input) -> output ids (no EOS), input order.

    Decoding arguments left None come from `self.decode`. A sentence of n
    source tokens gets at most `ceil(max_len_ratio * n + max_len_offset)`
    output tokens, greedy and beam alike, so its output does not depend on
    which other sentences share its batch. `on_batch()`, if given, runs
    before each batch (training uses it to stop an evaluation on a signal)."""
    nbest = self.translate_ids_nbest(src_ids, beam_size, 1, alpha, max_len_ratio,
                                     max_len_offset, batch_size, on_batch, scores=False)
    return [hyps[0][0] for hyps in nbest]

  def translate_ids_nbest(self, src_ids: Sequence[np.ndarray], beam_size: int | None = None,
                          n_best: int = 1, alpha: float | None = None,
                          max_len_ratio: float | None = None, max_len_offset: int | None = None,
                          batch_size: int = 128, on_batch=None,
                          scores: bool = True) -> list[list[tuple[list[int], float]]]:
    """Like `translate_ids`, but the `n_best <= beam_size` best outputs of each
    sentence, best first, each with its score: the length-penalised log
    probability beam search ranks by (`beam.length_penalty`; with
    `beam_size=1` the greedy output's). `scores=False` with `beam_size=1`
    runs plain greedy decoding and gives NaN scores."""
    d = self.settings(beam_size, alpha, max_len_ratio, max_len_offset)
    check(d.beam_size, d.alpha, d.max_len_ratio, d.max_len_offset, n_best)
    beam_size, alpha, max_len_ratio, max_len_offset = (
        d.beam_size, d.alpha, d.max_len_ratio, d.max_len_offset)
    out: list = [None] * len(src_ids)
    # Fewer inputs than a batch are padded to the next power of two rows, not
    # to `batch_size` (one line from the translate CLI decodes 1 row, not 128).
    batch_size = max(1, min(batch_size, 1 << max(len(src_ids) - 1, 0).bit_length()))
    for ix, batch in eval_batches(src_ids, None, batch_size):
      if on_batch is not None:
        on_batch()
      # Whole padded batches and lengths rounded up to 8 bound the compilations.
      src, lengths = batch["src"], batch["src_lengths"]
      max_len = self._max_len(int(lengths.max()), max_len_ratio, max_len_offset)
      max_len = -(-max_len // 8) * 8
      if beam_size == 1 and not scores:
        res = greedy_decode(self.config, self.params, src, lengths, max_len)
        tokens, lens = np.asarray(res.tokens)[:, None], np.asarray(res.lengths)[:, None]
        score = np.full(lens.shape, np.nan, np.float32)
      else:
        from flax_attn.beam import beam_search
        res = beam_search(self.config, self.params, src, lengths, beam_size=beam_size,
                          alpha=alpha, max_len_ratio=max_len_ratio,
                          max_len_offset=max_len_offset, max_len=max_len, n_best=n_best)
        tokens, lens, score = (np.asarray(x) for x in (res.tokens, res.lengths, res.scores))
      for r, k in enumerate(ix):
        # The batch ran to its longest sentence's limit; each row stops at its own.
        own = self._max_len(int(lengths[r]), max_len_ratio, max_len_offset)
        hyps = []
        for j in range(tokens.shape[1]):
          row = tokens[r, j, :min(int(lens[r, j]), own)].tolist()
          row = row[:-1] if row and row[-1] == self.config.eos_id else row
          hyps.append((row, float(score[r, j])))
        out[k] = hyps
    return out

  def encode(self, sentences: Sequence[str]) -> list[np.ndarray]:
    src, _, truncated = encode_pairs(sentences, None, self.src_tokenizer, None,
                                     self.max_src_len, 1)
    if truncated:
      logger.warning("%d input(s) longer than %d tokens were truncated", truncated,
                      self.max_src_len - 1)
    return src

  def translate(self, sentences: Sequence[str], beam_size: int | None = None,
                alpha: float | None = None, max_len_ratio: float | None = None,
                max_len_offset: int | None = None,
                batch_size: int = 128, on_batch=None) -> list[str]:
    """Translates a list of strings (outputs in input order; "" -> "").
    Decoding arguments left None come from `self.decode` (for a loaded
    checkpoint: its config's `decode` group).
    `on_batch()`, if given, runs before each batch of `batch_size` (a
    progress bar, say).

    Raises:
      TypeError: for a non-string, naming its position.
    """
    nbest = self.translate_nbest(sentences, beam_size, 1, alpha, max_len_ratio, max_len_offset,
                                 batch_size, on_batch, scores=False)
    return [hyps[0][0] for hyps in nbest]

  def translate_nbest(self, sentences: Sequence[str], beam_size: int | None = None,
                      n_best: int = 1, alpha: float | None = None,
                      max_len_ratio: float | None = None, max_len_offset: int | None = None,
                      batch_size: int = 128, on_batch=None,
                      scores: bool = True) -> list[list[tuple[str, float]]]:
    """The `n_best` best (text, score) pairs of each sentence, best first (see
    `translate_ids_nbest`). An empty or blank sentence gives `n_best` pairs
    `("", nan)`."""
    sentences = check_sentences(sentences)
    keep = [i for i, s in enumerate(sentences) if s.strip()]
    result = [[("", math.nan)] * n_best for _ in sentences]
    if keep:
      nbest = self.translate_ids_nbest(self.encode([sentences[i] for i in keep]), beam_size,
                                       n_best, alpha, max_len_ratio, max_len_offset, batch_size,
                                       on_batch, scores)
      for i, hyps in zip(keep, nbest):
        result[i] = [(self.trg_tokenizer.decode(ids), score) for ids, score in hyps]
    return result

  def attention(self, sentence: str, max_len_ratio: float | None = None,
                max_len_offset: int | None = None):
    """Greedy translation of one sentence with its attention.

    Returns (source tokens incl. `<eos>`, output tokens incl. `<eos>` if
    produced, weights `[out_len, src_len]` numpy). An empty or blank
    sentence, which `translate` answers with "", gives `([], [], [0, 0] array)`.
    """
    (sentence,) = check_sentences([sentence])
    if not sentence.strip():
      return [], [], np.zeros((0, 0), np.float32)
    d = self.settings(max_len_ratio=max_len_ratio, max_len_offset=max_len_offset)
    src = self.encode([sentence])[0]
    res = greedy_decode(self.config, self.params, src[None], np.array([len(src)]),
                        self._max_len(len(src), d.max_len_ratio, d.max_len_offset))
    n = int(res.lengths[0])
    out_ids = np.asarray(res.tokens[0, :n])
    src_tokens = [self.src_tokenizer.id_to_token(int(i)) for i in src]
    trg_tokens = [self.trg_tokenizer.id_to_token(int(i)) for i in out_ids]
    return src_tokens, trg_tokens, np.asarray(res.attention[0, :n, :len(src)])


