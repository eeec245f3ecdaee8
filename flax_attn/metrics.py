"""Evaluation metrics on decoded strings (pure Python, plus sacrebleu for BLEU).

* ``exact_match``: fraction in [0, 1] of hypotheses equal to some reference.
* ``wer`` (g2p word error rate): percent of words whose output matches none of
  their references; ``wer == 100 * (1 - exact_match)``.
* ``per`` (phoneme error rate): percent; for each example the reference with the
  smallest edit distance (first one on ties) gives both the errors and the
  length, summed over the corpus.
* ``bleu_scores``: sacrebleu corpus BLEU, lower-cased BLEU and chrF, each with
  its signature string.
* ``tokenised_bleu``: lower-cased BLEU on Moses-tokenised text, as the
  multimodal-MT papers report it (beside the sacreBLEU figures, never instead).
* ``task_metrics``: the metrics a task reports (the one place that chooses).

Strings are compared as whitespace-separated token lists, so "HH  AH" equals
"HH AH". ``refs_multi`` is ``[num_examples][num_refs_i]`` (a bare string counts
as a single reference). Inputs of different lengths raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import sacrebleu


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance (unit insert/delete/substitute) between two sequences."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, start=1):
    cur = [i]
    for j, y in enumerate(b, start=1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def _check_lengths(hyps: Sequence, refs: Sequence) -> None:
  if len(hyps) != len(refs):
    raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} references")


def _ref_lists(refs_multi: Sequence) -> list[list[list[str]]]:
  """``[n][k]`` strings -> ``[n][k]`` token lists; each example needs >= 1 reference."""
  out = []
  for i, refs in enumerate(refs_multi):
    if isinstance(refs, str):
      refs = [refs]
    if len(refs) == 0:
      raise ValueError(f"example {i} has no references")
    out.append([r.split() for r in refs])
  return out


def exact_match(hyps: Sequence[str], refs_multi: Sequence[Sequence[str]]) -> float:
  """Fraction in [0, 1] of ``hyps`` equal to one of their references (0.0 if empty)."""
  _check_lengths(hyps, refs_multi)
  if not hyps:
    return 0.0
  refs = _ref_lists(refs_multi)
  hits = sum(h.split() in r for h, r in zip(hyps, refs))
  return float(hits / len(hyps))


def wer(hyps: Sequence[str], refs_multi: Sequence[Sequence[str]]) -> float:
  """Word error rate in percent: examples matching no reference / examples."""
  _check_lengths(hyps, refs_multi)
  if not hyps:
    return 0.0
  return float(100.0 * (1.0 - exact_match(hyps, refs_multi)))


def per(hyps: Sequence[str], refs_multi: Sequence[Sequence[str]]) -> float:
  """Phoneme error rate in percent: sum of min edit distances / sum of chosen ref lengths."""
  _check_lengths(hyps, refs_multi)
  errors = length = 0
  for hyp, refs in zip(hyps, _ref_lists(refs_multi)):
    tokens = hyp.split()
    dist, ref = min(((edit_distance(tokens, r), r) for r in refs), key=lambda p: p[0])
    errors += dist
    length += len(ref)
  return float(100.0 * errors / length) if length else 0.0


def bleu_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict:
  """Corpus BLEU, lower-cased BLEU and chrF of ``hyps`` against one reference each.

  Returns:
    ``{'bleu', 'bleu_signature', 'bleu_lc', 'bleu_lc_signature', 'chrf',
    'chrf_signature'}``; scores are Python floats on a 0-100 scale.
  """
  _check_lengths(hyps, refs)
  if not hyps:
    raise ValueError("bleu_scores needs at least one hypothesis")
  hyps, refs = list(hyps), [list(refs)]
  out = {}
  for key, metric in (("bleu", sacrebleu.metrics.BLEU()),
                      ("bleu_lc", sacrebleu.metrics.BLEU(lowercase=True)),
                      ("chrf", sacrebleu.metrics.CHRF())):
    out[key] = float(metric.corpus_score(hyps, refs).score)
    out[f"{key}_signature"] = str(metric.get_signature())
  return out


# What the tokenised BLEU's signature adds to sacreBLEU's own (which says tok:none).
TOKENISED_BLEU_PREP = "lc+moses-norm+moses-tok(sacremoses)"


def tokenised_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str) -> dict:
  """Paper-comparable BLEU: lower-cased, Moses-tokenised BLEU of detokenised text.

  Hypotheses and references alike are lower-cased, punctuation-normalised
  and tokenised with the Moses scripts' Python port (``sacremoses``, for
  ``lang``), in the order of the Multi30k dataset's own preprocessing
  (``scripts/task1-tokenize.sh`` of github.com/multi30k/dataset:
  ``lowercase.perl | normalize-punctuation.perl -l L | tokenizer.perl -l L``),
  then scored by sacreBLEU with ``tokenize="none"``: BLEU over those tokens,
  what ``multi-bleu.perl`` and fairseq's ``generate.py`` report on the
  tokenised files that multimodal-MT papers train on (e.g. Wu et al. 2021,
  github.com/LividWo/Revisit-MMT). Not comparable with ``bleu``/``bleu_lc``,
  which tokenise with sacreBLEU's 13a.

  Returns ``{'bleu_tok_lc', 'bleu_tok_lc_signature'}``.
  """
  import sacremoses

  _check_lengths(hyps, refs)
  if not hyps:
    raise ValueError("tokenised_bleu needs at least one hypothesis")
  norm, tok = sacremoses.MosesPunctNormalizer(lang=lang), sacremoses.MosesTokenizer(lang=lang)

  def prep(text: str) -> str:
    return tok.tokenize(norm.normalize(text.lower()), escape=False, return_str=True)

  metric = sacrebleu.metrics.BLEU(tokenize="none", lowercase=True)
  score = metric.corpus_score([prep(h) for h in hyps], [[prep(r) for r in refs]])
  return {"bleu_tok_lc": float(score.score),
          "bleu_tok_lc_signature": f"{metric.get_signature()}|prep:{TOKENISED_BLEU_PREP}:{lang}"}


def batch_mean_perplexity(nll_N: Sequence[float], tokens_N: Sequence[float],
                          src_lengths_N: Sequence[int], batch_size: int = 128) -> float:
  """Perplexity averaged the way bentrevett/pytorch-seq2seq reports it.

  Its `evaluate` takes batches of `batch_size` (128) sentences in source
  length order (torchtext's `BucketIterator` sorts evaluation data by
  `len(src)`, stably), the mean loss over each batch's target tokens, and
  the exponential of the mean over batches. Short sentences then weigh
  more per token than in `exp(total NLL / total tokens)`.

  Args:
    nll_N: each sentence's summed NLL over its target tokens.
    tokens_N: each sentence's target token count.
    src_lengths_N: each sentence's source length (only the order matters).
    batch_size: sentences per batch.
  """
  nll_N, tokens_N = np.asarray(nll_N, np.float64), np.asarray(tokens_N, np.float64)
  if not len(nll_N) == len(tokens_N) == len(src_lengths_N) or not len(nll_N):
    raise ValueError(f"need equally many (> 0) NLLs, token counts and source lengths, got "
                     f"{len(nll_N)}, {len(tokens_N)}, {len(src_lengths_N)}")
  order = np.argsort(np.asarray(src_lengths_N), kind="stable")
  means = [nll_N[ix].sum() / max(tokens_N[ix].sum(), 1.0)
           for ix in np.split(order, list(range(batch_size, len(order), batch_size)))]
  return float(math.exp(min(float(np.mean(means)), 50.0)))


def task_metrics(task: str, hyps: Sequence[str], refs_multi: Sequence[Sequence[str]],
                 lang: str = "") -> dict:
  """The metrics of ``task``: g2p -> wer, per; multi30k -> bleu_scores (first
  reference) and, given the target language ``lang``, tokenised_bleu;
  every other task -> exact_match in percent."""
  if task == "g2p":
    return {"wer": wer(hyps, refs_multi), "per": per(hyps, refs_multi)}
  if task == "multi30k":
    refs = [r if isinstance(r, str) else r[0] for r in refs_multi]
    return {**bleu_scores(hyps, refs), **(tokenised_bleu(hyps, refs, lang) if lang else {})}
  return {"exact_match": 100.0 * exact_match(hyps, refs_multi)}
