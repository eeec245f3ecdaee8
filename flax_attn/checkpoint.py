"""Orbax checkpoints (the `args=` API only): latest K, best by a metric, resume.

Each checkpoint step holds two items:
  state  the `TrainState` (params, optimizer state, step, RNG, lr scale)
  meta   JSON: the experiment config, the model config, the tokenizers (their
         files, base64), the bucket widths, the data position and host-side
         schedule state,
so a checkpoint directory alone is enough to resume, translate or evaluate.
The data position is a pure function of the step (see `flax_attn.train`),
so no per-process iterator files are needed and a run resumes on any number
of processes. Workdirs may be URLs (`gs://...`).

Restoring never silently starts over:
* a step that cannot be read (damaged files, even after one retry) is
  skipped for an older one, and once an older one restores the damaged step
  is moved aside to `damaged-<step>-<time>` (renamed, never deleted), so
  later saves, `evaluate` and `translate` see only good steps;
* if checkpoints exist and none restores, `RestoreError` names the newest
  step and the first cause (nothing is moved);
* a checkpoint whose state has another structure (a changed optimizer)
  raises `IncompatibleCheckpoint`, naming the paths that differ.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

from flax_attn import parallel, paths

LATEST_DIR = "checkpoints"
BEST_DIR = "best"


def _handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class RestoreError(Exception):
  """Checkpoints exist but none can be restored (one-line message)."""


class IncompatibleCheckpoint(RestoreError):
  """The checkpoint's training state does not fit this run's config."""

  def __init__(self, message: str, meta: dict | None = None):
    super().__init__(message)
    self.meta = meta


def first_cause(e: BaseException, limit: int = 240) -> str:
  """`Type: first line of the message`, shortened to one line."""
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  line = f"{type(e).__name__}: {text}" if text else type(e).__name__
  return line if len(line) <= limit else line[:limit - 3] + "..."


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def key_paths(tree: Any) -> set[str]:
  """Leaf paths of a pytree as `a/b/0/c` strings (dicts, dataclasses,
  named tuples and lists all spelled the same way)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path) for path, _ in leaves}


def describe_structure_change(saved: set[str], expected: set[str], limit: int = 3) -> str:
  missing, extra = sorted(expected - saved), sorted(saved - expected)
  parts = []
  if extra:
    parts.append(f"only in the checkpoint: {', '.join(extra[:limit])}"
                 + (f" (+{len(extra) - limit} more)" if len(extra) > limit else ""))
  if missing:
    parts.append(f"only in this run: {', '.join(missing[:limit])}"
                 + (f" (+{len(missing) - limit} more)" if len(missing) > limit else ""))
  return "; ".join(parts)


_WORST = {"min": float("inf"), "max": float("-inf")}


def _manager(directory: epath.Path, max_to_keep: int | None, best_metric: str | None = None,
             best_mode: str = "min") -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
      # A checkpoint saved without the metric (the run chose by another one
      # before it resumed) ranks last instead of failing the next save.
      best_fn=(lambda m: float(m.get(best_metric, _WORST[best_mode]))) if best_metric else None,
      best_mode=best_mode, keep_checkpoints_without_metrics=best_metric is None,
      # Both managers may save the same step at once (an evaluation step); on
      # several processes their barriers ("<prefix>_async_write_complete.<step>")
      # would otherwise share a name, and the second waits on the first forever.
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=directory.name))
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


class _DropReadOnlyNotices(logging.Filter):
  """Drops Orbax's notices that a read-only manager is read-only
  ("CheckpointManagerOptions.read_only=True, setting ...", "Given directory
  is read only=..."): they describe what was asked for, not a problem.
  Every other record (other Orbax warnings included) passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "orbax" not in record.pathname or record.levelno > logging.WARNING:
      return True
    message = record.getMessage()
    return not ("read_only=True, setting" in message or "is read only" in message)


def read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
  """A `CheckpointManager` for reading (evaluate, translate, `Translator`),
  made without Orbax's read-only notices on the `absl` logger."""
  quiet = _DropReadOnlyNotices()
  logger = logging.getLogger("absl")
  logger.addFilter(quiet)
  try:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0)
    return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())
  finally:
    logger.removeFilter(quiet)


class Checkpoints:
  """The run's checkpoint managers: `workdir/checkpoints` keeps the latest
  `keep`, `workdir/best` the best one by `best_metric` (`best_mode` min/max)."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, best_metric: str | None = None,
               best_mode: str = "min"):
    self.workdir = paths.as_path(workdir)
    self.latest = _manager(self.workdir / LATEST_DIR, keep)
    self.best_metric = best_metric
    self.best = (_manager(self.workdir / BEST_DIR, 1, best_metric, best_mode)
                 if best_metric else None)

  @property
  def directory(self) -> epath.Path:
    return self.workdir / LATEST_DIR

  def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> bool:
    """Saves to latest (unless that step exists); also to best when `metrics`
    has the best metric. Returns whether a new latest step was written."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    wrote = False
    if step not in self.latest.all_steps():
      wrote = bool(self.latest.save(step, args=args, force=True))
    if self.best is not None and metrics and self.best_metric in metrics:
      if step not in self.best.all_steps():
        self.best.save(step, args=args, metrics={k: float(v) for k, v in metrics.items()},
                       force=True)
    return wrote

  def steps(self) -> list[int]:
    """Saved steps, newest first."""
    return sorted(self.latest.all_steps(), reverse=True)

  def read_meta(self, step: int) -> dict:
    return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def _check_structure(self, step: int, abstract_state: Any, meta: dict) -> None:
    saved = key_paths(self.latest.item_metadata(step)["state"].tree)
    expected = key_paths(abstract_state)
    if saved != expected:
      raise IncompatibleCheckpoint(
          f"checkpoint step {step} in {self.directory} holds a differently structured "
          f"training state ({describe_structure_change(saved, expected)})", meta)

  def _restore_state(self, step: int, abstract_state: Any) -> Any:
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    try:
      return self.latest.restore(step, args=args)["state"]
    except Exception as e:  # one retry: a transient storage error is not damage
      logging.warning("checkpoint step %d: restore failed (%s); retrying once", step,
                      first_cause(e))
      time.sleep(1.0)
      return self.latest.restore(step, args=args)["state"]

  def restore_latest(self, abstract_state_for: Callable[[int, dict], Any]
                     ) -> tuple[int, Any, dict] | None:
    """Restores the newest checkpoint that reads (see the module docstring).

    `abstract_state_for(step, meta)` gives the target structure for a
    checkpoint's step and meta (it may raise `IncompatibleCheckpoint`). Returns (step, state, meta),
    or None when there is no checkpoint at all.
    """
    def read(step: int) -> tuple[Any, dict]:
      meta = _readable(lambda: self.read_meta(step), "meta")
      abstract = abstract_state_for(step, meta)  # may raise IncompatibleCheckpoint
      _readable(lambda: self._check_structure(step, abstract, meta), "state metadata")
      return _readable(lambda: self._restore_state(step, abstract), "state"), meta

    step, restored, damaged = _newest_readable(self.steps(), read)
    if step is not None:
      for bad, cause in damaged:
        self._move_aside(bad, cause)
      return step, *restored
    if damaged:
      raise RestoreError(_none_readable(damaged, self.directory, "restored")
                         + "; nothing was changed: fix or move the directory, or use another --workdir")
    return None

  def _move_aside(self, step: int, cause: str) -> None:
    src = self.directory / str(step)
    dst = self.directory / f"damaged-{step}-{int(time.time())}"
    if jax.process_index() == 0:
      logging.warning("checkpoint step %d is damaged (%s); moved aside to %s", step, cause, dst)
      paths.move_aside(src, dst)
    parallel.sync(f"flax_attn_move_aside_{step}")
    self.latest.reload()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


class _Unreadable(Exception):
  """A checkpoint step that cannot be read; the message says what and why."""


def _readable(read: Callable[[], Any], part: str = "") -> Any:
  """`read()`, with any failure but `IncompatibleCheckpoint` as `_Unreadable`."""
  try:
    return read()
  except IncompatibleCheckpoint:
    raise
  except Exception as e:
    raise _Unreadable(f"{part}: {first_cause(e)}" if part else first_cause(e)) from e


def _newest_readable(steps: list[int], read: Callable[[int], Any],
                     on_failure: Callable[[int, str], None] | None = None
                     ) -> tuple[int | None, Any, list[tuple[int, str]]]:
  """The one "newest step that reads" loop: `read(step)` over `steps`
  (newest first) until one does not raise `_Unreadable`. Returns (step,
  what it read, [(step, cause)] of the newer steps that failed), or (None,
  None, every failure)."""
  failures = []
  for step in steps:
    try:
      return step, read(step), failures
    except _Unreadable as e:
      failures.append((step, str(e)))
      if on_failure is not None:
        on_failure(step, str(e))
  return None, None, failures


def _none_readable(failures: list[tuple[int, str]], directory, verb: str) -> str:
  step, cause = failures[0]
  return (f"checkpoint step {step} in {directory} could not be {verb} ({cause})"
          + (f", nor could {len(failures) - 1} older step(s)" if len(failures) > 1 else ""))


def _step_dirs(directory: epath.Path) -> list[int]:
  """Finalized steps (Orbax's own test: on object stores a step folder is
  complete only once its commit marker exists), newest first."""
  return sorted((s for s in ocp.path.step.checkpoint_steps(directory)), reverse=True)


def find_checkpoint(path: str | os.PathLike, step: int | None = None,
                    which: str = "latest") -> tuple[epath.Path, list[int]]:
  """Resolves a workdir, a manager directory or a step directory (local or a
  URL) to (manager directory, candidate steps newest first). A given `step`
  or step directory gives exactly that one. `which`: "latest" or "best"."""
  if which not in ("latest", "best"):
    raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
  path = paths.as_path(path)
  paths.refresh(path)
  if not path.exists():
    raise FileNotFoundError(f"no such checkpoint or workdir: {path}")
  if not path.is_dir():
    raise FileNotFoundError(f"{path} is a file, not a workdir or checkpoint directory")
  if (path / "meta").exists() and (path / "state").exists():  # a step directory
    if not path.name.isdigit():
      raise FileNotFoundError(f"{path} is not a checkpoint step directory")
    return path.parent, [int(path.name)]
  sub = path / (BEST_DIR if which == "best" else LATEST_DIR)
  if sub.is_dir():
    path = sub
  steps = _step_dirs(path)
  if not steps:
    raise FileNotFoundError(f"no checkpoint found in {path}")
  if step is None:
    return path, steps
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {path} (have {sorted(steps)})")
  return path, [step]


def load_for_inference(path: str | os.PathLike, step: int | None = None,
                       which: str = "latest") -> tuple[int, dict, dict]:
  """(step, params as numpy, meta) from a checkpoint, without the optimizer.

  Without an explicit step, a step that cannot be read is skipped for the
  next older one (with a warning); `ValueError` if none reads.
  """
  directory, candidates = find_checkpoint(path, step, which)

  def warn(s: int, cause: str) -> None:
    if len(candidates) > 1:
      logging.warning("checkpoint step %d in %s could not be read (%s); trying an older one",
                      s, directory, cause)

  with read_only_manager(directory) as mngr:
    def read(s: int) -> dict:
      return _readable(lambda: mngr.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())))
    s, out, causes = _newest_readable(candidates, read, on_failure=warn)
  if s is None:
    raise ValueError(_none_readable(causes, directory, "read"))
  return s, out["state"]["params"], out["meta"]
