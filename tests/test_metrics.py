"""Tests for flax_attn.metrics."""

import pytest

from flax_attn import metrics


@pytest.mark.parametrize("a, b, d", [
    ("", "", 0), ("abc", "", 3), ("", "ab", 2), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("abc", "abc", 0), (["HH", "AH"], ["HH", "AA", "L"], 2),
])
def test_edit_distance(a, b, d):
  assert metrics.edit_distance(list(a), list(b)) == d
  assert metrics.edit_distance(list(b), list(a)) == d


REFS = [["R EH D", "R IY D"], ["K AE T"], ["D AO G"], ["T AH M EY T OW", "T AH M AA T OW"]]


def test_exact_match_and_wer():
  hyps = ["R IY D", "K AE T", "D AA G", "T AH M AA T  OW"]  # extra space is ignored
  assert metrics.exact_match(hyps, REFS) == 0.75
  assert metrics.wer(hyps, REFS) == pytest.approx(25.0)
  assert isinstance(metrics.wer(hyps, REFS), float)
  assert metrics.wer(["R EH D"], ["R EH D"]) == 0.0  # bare string = one reference


def test_per_hand_computed():
  # read: "R IY" vs best ref "R EH D"/"R IY D" -> 1 deletion, length 3
  # cat:  "K AE T" exact -> 0, length 3
  # dog:  "D AA G" -> 1 substitution, length 3
  # tomato: "T AH M AA T" vs "T AH M AA T OW" -> 1, length 6
  hyps = ["R IY", "K AE T", "D AA G", "T AH M AA T"]
  assert metrics.per(hyps, REFS) == pytest.approx(100.0 * 3 / 15)
  assert metrics.per([r[0] for r in REFS], REFS) == 0.0


def test_per_picks_closest_reference_length():
  # Distance 1 to the 2-phoneme ref, 3 to the 5-phoneme ref: uses length 2.
  assert metrics.per(["A"], [["A B C D E", "A B"]]) == pytest.approx(50.0)


def test_mismatched_lengths_raise():
  for fn in (metrics.exact_match, metrics.wer, metrics.per):
    with pytest.raises(ValueError):
      fn(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError):
    metrics.bleu_scores(["a b"], ["a b", "c"])
  with pytest.raises(ValueError):
    metrics.per(["a"], [[]])


def test_bleu_identical_is_100():
  refs = ["A man in a blue shirt is standing on a ladder.",
          "Two dogs are playing in the snow near a red fence."]
  out = metrics.bleu_scores(refs, refs)
  assert out["bleu"] == pytest.approx(100.0)
  assert out["bleu_lc"] == pytest.approx(100.0)
  assert out["chrf"] == pytest.approx(100.0)
  assert all(isinstance(out[k], float) for k in ("bleu", "bleu_lc", "chrf"))
  assert "case:mixed" in out["bleu_signature"] and "case:lc" in out["bleu_lc_signature"]
  assert out["chrf_signature"].startswith("nrefs:1")


def test_bleu_lowercase_differs():
  hyps = ["a man in a blue shirt is standing on a ladder ."]
  refs = ["A MAN IN A BLUE SHIRT IS STANDING ON A LADDER ."]
  out = metrics.bleu_scores(hyps, refs)
  assert out["bleu_lc"] == pytest.approx(100.0)
  assert out["bleu"] < 10.0


def test_detokenised_word_output_gives_no_sacrebleu_warning(caplog):
  from flax_attn import tokenizers
  refs = [f"A man's T-shirt has {i} dots." for i in range(120)]
  caplog.set_level("WARNING", logger="sacrebleu")
  for lang, warns in ((None, True), ("en", False)):
    t = tokenizers.WordTokenizer.fit(refs, min_freq=1, lowercase=False, lang=lang)
    hyps = [t.decode(t.encode(r)) for r in refs]
    caplog.clear()
    out = metrics.bleu_scores(hyps, refs)
    assert any("forgot to detokenize" in r.message for r in caplog.records) == warns
    assert (out["bleu"] == pytest.approx(100.0)) == (not warns)


def test_task_metrics_dispatch():
  assert metrics.task_metrics("g2p", ["A B"], [["A B", "A C"]]) == {"wer": 0.0, "per": 0.0}
  assert metrics.task_metrics("dates", ["x", "y"], [["x"], ["z"]]) == {"exact_match": 50.0}
  out = metrics.task_metrics("multi30k", ["A dog runs."], [["A dog runs."]])
  assert out["bleu"] == pytest.approx(100.0) and "chrf_signature" in out


def test_batch_mean_perplexity_hand_computed():
  """The tutorial's average: batches in source-length order (stable), the
  token mean per batch, the plain mean over batches."""
  import math
  nll, tokens, src_len = [6.0, 1.0, 4.0, 3.0, 10.0], [2, 1, 2, 3, 5], [5, 1, 3, 1, 9]
  # order by source length: rows 1, 3, 2, 0, 4 -> batches (1, 3), (2, 0), (4,)
  want = math.exp(((1 + 3) / (1 + 3) + (4 + 6) / (2 + 2) + 10 / 5) / 3)
  assert metrics.batch_mean_perplexity(nll, tokens, src_len, batch_size=2) == pytest.approx(want)
  # one batch: the token-weighted perplexity
  assert metrics.batch_mean_perplexity(nll, tokens, src_len, batch_size=128) == pytest.approx(
      math.exp(24 / 13))
  with pytest.raises(ValueError, match="equally many"):
    metrics.batch_mean_perplexity(nll, tokens[:4], src_len)


def test_tokenised_bleu_splits_punctuation_and_ignores_case():
  """The papers' BLEU tokenises with Moses before scoring: "hat," and "hat ,"
  are the same tokens there, and case does not count."""
  hyps = ["Ein Mann mit einem Hut, der lächelt."]
  refs = ["ein mann mit einem hut , der lächelt ."]
  out = metrics.tokenised_bleu(hyps, refs, "de")
  assert out["bleu_tok_lc"] == pytest.approx(100.0)
  assert "tok:none" in out["bleu_tok_lc_signature"]
  assert out["bleu_tok_lc_signature"].endswith("moses-tok(sacremoses):de")
  # Plain sacreBLEU on the raw reference's spacing scores the same pair below 100
  # (13a splits the "," but keeps "Ein" and "ein" apart in the cased figure).
  assert metrics.bleu_scores(hyps, refs)["bleu"] < 100.0


def test_tokenised_bleu_matches_a_hand_count():
  """2 of 3 unigrams right, 1 of 2 bigrams, no trigram: with sacreBLEU's
  default smoothing ('exp') the score is not 0, and differs from a perfect match."""
  perfect = metrics.tokenised_bleu(["a b c d"], ["a b c d"], "en")["bleu_tok_lc"]
  worse = metrics.tokenised_bleu(["a b x d"], ["a b c d"], "en")["bleu_tok_lc"]
  assert perfect == pytest.approx(100.0) and 0.0 < worse < perfect


def test_task_metrics_adds_tokenised_bleu_given_the_target_language():
  plain = metrics.task_metrics("multi30k", ["A dog runs."], [["A dog runs."]])
  assert "bleu_tok_lc" not in plain
  # Moses splits "man's" into "man 's", 13a keeps it whole: more matching
  # n-grams on Moses tokens, so the tokenised BLEU is the higher one here.
  out = metrics.task_metrics("multi30k", ["a man's dog sits here"], [["A man's cat sits here"]],
                             lang="en")
  assert out["bleu_tok_lc"] > out["bleu_lc"] > 0.0
  same = metrics.tokenised_bleu(["a man's dog sits here"], ["A man's cat sits here"], "en")
  assert out["bleu_tok_lc"] == same["bleu_tok_lc"]
