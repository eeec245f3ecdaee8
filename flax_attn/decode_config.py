"""How a run decodes: beam size, length penalty and output-length limits.

The one place that holds their defaults and their rules. An experiment config
carries them as its `decode` group; the training run's final evaluation uses
them, and so do `evaluate.py`, `translate.py` and `Translator` for a workdir
trained with that config (an argument or flag still overrides a field), so a
config reproduces its own published figure with no decoding flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

DEFAULT_BEAM_SIZE = 1          # greedy
DEFAULT_ALPHA = 0.6            # GNMT length-penalty exponent (Wu et al. 2016)
DEFAULT_MAX_LEN_RATIO = 1.5    # a source of n tokens gets at most
DEFAULT_MAX_LEN_OFFSET = 10    # ceil(1.5 n + 10) output tokens


def check(beam_size: Any, alpha: Any = DEFAULT_ALPHA, max_len_ratio: Any = DEFAULT_MAX_LEN_RATIO,
          max_len_offset: Any = DEFAULT_MAX_LEN_OFFSET, n_best: Any = 1,
          prefix: str = "") -> None:
  """Raises a one-line ValueError for a value no decoder can use; `prefix`
  names the fields as the caller's user knows them (`"--"`, `"decode."`)."""
  def need(ok: bool, message: str) -> None:
    if not ok:
      raise ValueError(message)

  def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  def is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

  need(is_int(beam_size) and beam_size >= 1,
       f"{prefix}beam_size must be an integer >= 1, got {beam_size!r}")
  need(is_num(alpha) and alpha >= 0, f"{prefix}alpha must be >= 0, got {alpha!r}")
  need(is_num(max_len_ratio) and max_len_ratio >= 0,
       f"{prefix}max_len_ratio must be >= 0, got {max_len_ratio!r}")
  need(is_int(max_len_offset) and max_len_offset >= 0,
       f"{prefix}max_len_offset must be an integer >= 0, got {max_len_offset!r}")
  need(is_int(n_best) and 1 <= n_best <= beam_size,
       f"{prefix}n_best must be between 1 and {prefix}beam_size ({beam_size}), got {n_best!r}")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Decoding settings (validated on construction).

  Attributes:
    beam_size: hypotheses kept per sentence; 1 is greedy decoding.
    alpha: GNMT length-penalty exponent for beam search (unused by greedy).
    max_len_ratio, max_len_offset: a sentence of n source tokens (EOS
      included) gets at most `ceil(max_len_ratio * n + max_len_offset)` output
      tokens, so its output does not depend on its batch.
  """
  beam_size: int = DEFAULT_BEAM_SIZE
  alpha: float = DEFAULT_ALPHA
  max_len_ratio: float = DEFAULT_MAX_LEN_RATIO
  max_len_offset: int = DEFAULT_MAX_LEN_OFFSET

  def __post_init__(self):
    check(self.beam_size, self.alpha, self.max_len_ratio, self.max_len_offset)

  def replace(self, **overrides: Any) -> "DecodeConfig":
    """A copy with the fields given and not None changed (a flag left unset
    keeps the config's value)."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def tag(self) -> str:
    """`.beam5.alpha0.6` (beam) or `.beam1` (greedy): names an output file."""
    return f".beam{self.beam_size}" + (f".alpha{self.alpha:g}" if self.beam_size > 1 else "")

  @classmethod
  def from_experiment(cls, experiment: Mapping[str, Any] | None,
                      prefix: str = "decode.") -> "DecodeConfig":
    """The `decode` group of an experiment config (a ConfigDict or the JSON
    dict a checkpoint keeps). A checkpoint saved before the group existed has
    a top-level `beam_size` and used the defaults for the rest; no config at
    all gives greedy decoding. A bad value is a one-line ValueError naming
    `<prefix><field>`."""
    experiment = experiment or {}
    group = experiment.get("decode")
    if group is None:
      group = {"beam_size": experiment.get("beam_size", DEFAULT_BEAM_SIZE)}
    group = dict(group)
    unknown = sorted(set(group) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"unknown field(s) {', '.join(prefix + u for u in unknown)}; "
                       f"known: {', '.join(prefix + f.name for f in dataclasses.fields(cls))}")
    values = {**cls().to_dict(), **group}
    check(values["beam_size"], values["alpha"], values["max_len_ratio"],
          values["max_len_offset"], prefix=prefix)
    return cls(**values)
