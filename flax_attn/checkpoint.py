"""Orbax checkpoints (the `args=` API only): latest K, best by a metric, resume.

Each checkpoint step holds three items:
  state  the `TrainState` (params, optimizer state, step, RNG, lr scale)
  data   the grain iterator's position
  meta   JSON: the experiment config, the model config, the tokenizers (their
         files, base64), the bucket widths and host-side schedule state.
so a checkpoint directory alone is enough to resume, translate or evaluate.
Saves are asynchronous and atomic (Orbax writes into a temporary directory and
renames it when complete), so a killed run never leaves a half checkpoint
that looks finished; a damaged one is skipped with a warning on restore.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

from flax_attn import tokenizers as tok_lib

LATEST_DIR = "checkpoints"
BEST_DIR = "best"


def tokenizer_to_json(tokenizer) -> dict[str, str]:
  """A tokenizer's saved files as `{filename: base64}` (fits in JSON)."""
  with tempfile.TemporaryDirectory() as d:
    tokenizer.save(d)
    return {name: base64.b64encode(Path(d, name).read_bytes()).decode("ascii")
            for name in sorted(os.listdir(d))}


def tokenizer_from_json(files: dict[str, str]):
  with tempfile.TemporaryDirectory() as d:
    for name, data in files.items():
      Path(d, os.path.basename(name)).write_bytes(base64.b64decode(data))
    return tok_lib.load_tokenizer(d)


def _manager(directory: Path, max_to_keep: int | None, best_metric: str | None = None,
             best_mode: str = "min", read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=not read_only,
      best_fn=(lambda m: float(m[best_metric])) if best_metric else None,
      best_mode=best_mode, keep_checkpoints_without_metrics=best_metric is None)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


class Checkpoints:
  """The run's checkpoint managers: `workdir/checkpoints` keeps the latest
  `keep`, `workdir/best` the best one by `best_metric` (`best_mode` min/max)."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min"):
    self.workdir = Path(workdir).absolute()
    self.latest = _manager(self.workdir / LATEST_DIR, keep)
    self.best_metric = best_metric
    self.best = (_manager(self.workdir / BEST_DIR, 1, best_metric, best_mode)
                 if best_metric else None)

  def save(self, step: int, state: Any, data_iter, meta: dict, metrics: dict | None = None,
           force: bool = False) -> None:
    """Saves to latest; also to best when metrics with the best metric are given."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iter),
                              meta=ocp.args.JsonSave(meta))
    if step not in self.latest.all_steps():
      self.latest.save(step, args=args, force=force)
    if self.best is not None and metrics and self.best_metric in metrics:
      if step not in self.best.all_steps():
        self.best.save(step, args=args, metrics={k: float(v) for k, v in metrics.items()},
                       force=True)

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps(), reverse=True)

  def restore_latest(self, abstract_state: Any, data_iter) -> tuple[int, Any, dict] | None:
    """Restores the newest checkpoint that loads (older ones if it is damaged).

    Returns (step, state, meta) or None when there is no checkpoint; the data
    iterator is set to its saved position in place.
    """
    for step in self.steps():
      try:
        out = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter),
            meta=ocp.args.JsonRestore()))
        return step, out["state"], out["meta"]
      except Exception as e:  # a damaged step: fall back to the previous one
        logging.warning("checkpoint step %d in %s could not be restored (%s: %s); "
                        "trying the previous one", step, self.latest.directory,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return None

  def latest_meta(self) -> dict | None:
    """The meta item of the newest readable checkpoint (None if none)."""
    for step in self.steps():
      try:
        return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as e:
        logging.warning("checkpoint step %d meta unreadable (%s); trying the previous one",
                        step, type(e).__name__)
    return None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


def find_checkpoint(path: str | os.PathLike, step: int | None = None,
                    which: str = "latest") -> tuple[Path, int]:
  """Resolves a workdir, a manager directory or a step directory to
  (manager directory, step). `which` is "latest" or "best" for a workdir."""
  path = Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"no such checkpoint or workdir: {path}")
  if (path / "meta").exists() and (path / "state").exists():  # a step directory
    return path.parent, int(path.name)
  if (path / (BEST_DIR if which == "best" else LATEST_DIR)).is_dir():
    path = path / (BEST_DIR if which == "best" else LATEST_DIR)
  steps = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit()
                 and (p / "meta").exists())
  if not steps:
    raise FileNotFoundError(f"no checkpoint found in {path}")
  if step is None:
    return path, steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {path} (have {steps})")
  return path, step


def load_for_inference(path: str | os.PathLike, step: int | None = None,
                       which: str = "latest") -> tuple[int, dict, dict]:
  """(step, params as numpy, meta) from a checkpoint, without the optimizer."""
  directory, step = find_checkpoint(path, step, which)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                             item_names=("state", "meta")) as mngr:
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                     meta=ocp.args.JsonRestore()))
  return step, out["state"]["params"], out["meta"]
