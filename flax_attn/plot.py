"""Figures: training curves from `metrics.jsonl` and attention heatmaps.

Figures are made with `matplotlib.figure.Figure` (no pyplot), so importing
this module never changes the user's matplotlib backend (a notebook keeps
its inline figures) and no display is needed.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from flax_attn import paths


def training_curves(metrics: str | os.PathLike | Sequence[dict], out_png: str | os.PathLike) -> None:
  """Train and validation loss against step (and the task metric if logged).

  `metrics`: a `metrics.jsonl` path (local or URL) or its rows; `out_png`
  may be a URL too.
  """
  if isinstance(metrics, (str, os.PathLike)):
    metrics = [json.loads(line) for line in paths.read_text(metrics).splitlines() if line.strip()]
  records = [r for r in metrics if not r.get("final")]
  train = [r for r in records if r.get("split") == "train"]
  val = [r for r in records if r.get("split") == "val"]
  metric = next((k for k in ("bleu_lc", "exact_match", "wer") if val and k in val[-1]), None)
  fig = Figure(figsize=(10 if metric else 5, 3.6))
  axes = fig.subplots(1, 2 if metric else 1, squeeze=False)
  ax = axes[0, 0]
  ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
  ax.set_xlabel("step"); ax.set_ylabel("cross entropy (nats/token)"); ax.legend()
  if metric:
    ax = axes[0, 1]
    ax.plot([r["step"] for r in val], [r[metric] for r in val], "o-")
    ax.set_xlabel("step"); ax.set_ylabel(f"val {metric}")
  fig.tight_layout()
  paths.save_figure(fig, out_png)


def attention_heatmap(src_tokens: Sequence[str], trg_tokens: Sequence[str],
                      weights: np.ndarray, out_png: str | os.PathLike | None = None,
                      ax=None):
  """Draws `weights [len(trg_tokens), len(src_tokens)]` with tokens on the axes.

  Returns the matplotlib Axes; writes `out_png` when given.
  """
  weights = np.asarray(weights)
  if weights.shape != (len(trg_tokens), len(src_tokens)):
    raise ValueError(f"weights have shape {weights.shape}, expected "
                     f"({len(trg_tokens)}, {len(src_tokens)})")
  own = ax is None
  if own:
    fig = Figure(figsize=(max(4, 0.35 * len(src_tokens) + 2),
                          max(3, 0.35 * len(trg_tokens) + 1.5)))
    ax = fig.subplots()
  ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
  ax.set_xticks(range(len(src_tokens)), [repr(t)[1:-1] if t.isspace() else t
                                         for t in src_tokens], rotation=90)
  ax.set_yticks(range(len(trg_tokens)), trg_tokens)
  ax.set_xlabel("source"); ax.set_ylabel("output")
  if own:
    ax.figure.tight_layout()
    if out_png is not None:
      paths.save_figure(ax.figure, out_png)
  return ax
