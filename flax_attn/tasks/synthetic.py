"""Synthetic sequence tasks: reverse, sort or copy a random token sequence.

``src`` is ``min_len..max_len`` tokens drawn uniformly from ``vocab``, joined by
single spaces (use ``WhitespaceTokenizer``); ``trg`` is the same tokens
reversed (``'reverse'``), sorted by their position in ``vocab`` (``'sort'``), or
unchanged (``'copy'``, a sanity check).

Test and val sequences are distinct from each other and never appear in train
(train itself may repeat a sequence). Each split uses its own generator derived
from ``seed``.
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np

from flax_attn.tasks import Split

TASKS = ("reverse", "sort", "copy")
DEFAULT_VOCAB = tuple(string.ascii_lowercase[:20])  # 'a'..'t'


def _target(tokens: list[int], task: str) -> list[int]:
  if task == "reverse":
    return tokens[::-1]
  if task == "sort":
    return sorted(tokens)
  return list(tokens)


def _sample(rng: np.random.Generator, n: int, vocab_len: int, min_len: int, max_len: int,
            exclude: set, unique: bool) -> list[tuple[int, ...]]:
  """``n`` sequences of vocab indices, none in ``exclude`` (nor repeated if unique)."""
  out: list[tuple[int, ...]] = []
  seen = set() if unique else None
  attempts = 0
  while len(out) < n:
    attempts += 1
    if attempts > 50 * n + 1000:
      raise ValueError("could not draw enough distinct sequences; widen vocab or lengths")
    length = int(rng.integers(min_len, max_len + 1))
    seq = tuple(rng.integers(vocab_len, size=length).tolist())
    if seq in exclude or (unique and seq in seen):
      continue
    if unique:
      seen.add(seq)
    out.append(seq)
  return out


def load_splits(task: str = "reverse", seed: int = 0, num_train: int = 20000,
                num_val: int = 1000, num_test: int = 1000,
                vocab: Sequence[str] | None = None, min_len: int = 3,
                max_len: int = 12) -> dict[str, Split]:
  """``{'train', 'val', 'test'}`` splits of ``task``; deterministic given the arguments."""
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  vocab = list(DEFAULT_VOCAB if vocab is None else vocab)
  if not vocab or len(set(vocab)) != len(vocab):
    raise ValueError("vocab must be a non-empty list of distinct symbols")
  if any((not isinstance(v, str)) or not v or any(c.isspace() for c in v) for v in vocab):
    raise ValueError("vocab symbols must be non-empty strings without whitespace")
  if not 1 <= min_len <= max_len:
    raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")

  test = _sample(np.random.default_rng([seed, 3]), num_test, len(vocab), min_len, max_len,
                 exclude=set(), unique=True)
  val = _sample(np.random.default_rng([seed, 2]), num_val, len(vocab), min_len, max_len,
                exclude=set(test), unique=True)
  train = _sample(np.random.default_rng([seed, 1]), num_train, len(vocab), min_len, max_len,
                  exclude=set(test) | set(val), unique=False)

  def to_split(seqs):
    src = [" ".join(vocab[i] for i in s) for s in seqs]
    trg = [" ".join(vocab[i] for i in _target(list(s), task)) for s in seqs]
    return Split(src=src, trg=trg, refs=None)

  return {"train": to_split(train), "val": to_split(val), "test": to_split(test)}
