"""Task data: each module exposes ``load_splits(...) -> dict[str, Split]``.

Modules: ``dates`` (human dates -> ISO), ``synthetic`` (reverse / sort token
sequences), ``g2p`` (CMUdict spelling -> phonemes), ``multi30k`` (German ->
English captions). Splits are plain strings; tokenizing is the caller's job.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a task, as parallel lists of strings.

  Attributes:
    src: ``[num_examples]`` source strings.
    trg: ``[num_examples]`` main reference strings (the training target).
    refs: ``[num_examples][num_refs_i]`` every acceptable reference per example
      (``refs[i][0] == trg[i]``), or ``None`` when each example has one.
  """

  src: list[str]
  trg: list[str]
  refs: list[list[str]] | None = None

  def __post_init__(self):
    if len(self.src) != len(self.trg):
      raise ValueError(f"src has {len(self.src)} examples but trg has {len(self.trg)}")
    if self.refs is not None and len(self.refs) != len(self.src):
      raise ValueError(f"refs has {len(self.refs)} examples but src has {len(self.src)}")

  def __len__(self) -> int:
    return len(self.src)

  def references(self) -> list[list[str]]:
    """``refs`` if set, else each ``trg`` wrapped as a one-item list."""
    return self.refs if self.refs is not None else [[t] for t in self.trg]
