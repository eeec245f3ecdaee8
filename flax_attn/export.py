"""Inference checkpoints one can hand to someone else, and checkpoint averaging.

`export` turns a training workdir into a folder that holds only what
translating needs:

  params/        the parameters (Orbax, `StandardCheckpointer`), float32 or bfloat16;
                 no optimizer state, RNG or data position
  export.json    the experiment config (with its `decode` group), the model
                 config, the tokenizers (their files, base64), the bucket
                 widths, where the parameters came from (workdir, steps,
                 averaging), the metrics they were measured with, and the
                 package versions that wrote it
  MANIFEST.json  the sha256 and size of every other file

`load_export` checks the manifest and returns what `checkpoint.load_for_inference`
returns for a workdir, so `Translator.load`, `evaluate.py` and `translate.py`
read an export (a local path or a `gs://` URL) exactly like a workdir.

Averaging (`average_params`): the element-wise mean of the last K saved steps'
parameters, as fairseq's `average_checkpoints.py` and OpenNMT's
`average_models.py` do; computed in float64 and stored in the parameters' dtype.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_attn import checkpoint as ckpt_lib
from flax_attn import manifest, paths

FORMAT = "flax_attn-export"
FORMAT_VERSION = 1
META_FILE = "export.json"
MANIFEST_FILE = manifest.MANIFEST_FILE
PARAMS_DIR = "params"
EXPORT_DTYPES = ("float32", "bfloat16")


class ExportError(ValueError):
  """An export that cannot be written or read (one-line message)."""


def is_export(path: str | os.PathLike) -> bool:
  """Whether `path` is an export folder (it holds `export.json`)."""
  return (paths.as_path(path) / META_FILE).exists()


def average_params(params_list: Sequence[Any]) -> Any:
  """The element-wise mean of parameter trees of one structure (float64
  sums, the first tree's dtypes)."""
  if not params_list:
    raise ExportError("nothing to average")
  structure = jax.tree.structure(params_list[0])
  for i, p in enumerate(params_list[1:], 1):
    if jax.tree.structure(p) != structure:
      raise ExportError(f"parameter tree {i} has another structure than tree 0")

  def mean(*xs):
    total = np.zeros(np.shape(xs[0]), np.float64)
    for x in xs:
      total += np.asarray(x, np.float64)
    return (total / len(xs)).astype(np.asarray(xs[0]).dtype)

  return jax.tree.map(mean, *params_list)


def _final_metrics(workdir, step: int, averaged_steps: Sequence[int] | None = None) -> dict:
  """The final-evaluation rows of `metrics.jsonl` for the parameters of
  `step` (split -> metrics), or for the average of `averaged_steps` when a
  run averaged them itself (config `average_last`)."""
  log = paths.as_path(workdir) / "metrics.jsonl"
  if not log.exists():
    return {}
  out = {}
  for line in paths.read_text(log).splitlines():
    row = json.loads(line)
    same = (row.get("averaged_steps") == list(averaged_steps) if averaged_steps
            else not row.get("averaged_steps"))
    if (row.get("final") and row.get("step") == step and same
        and row.get("split") not in (None, "summary")):
      out[row["split"]] = {k: v for k, v in row.items() if k not in ("step", "split", "final")}
  return out


def versions() -> dict[str, str]:
  """The versions of the packages that shape the parameters and their numbers."""
  import flax
  import optax

  import flax_attn
  return {"flax_attn": flax_attn.__version__, "jax": jax.__version__,
          "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
          "flax": flax.__version__, "optax": optax.__version__,
          "orbax-checkpoint": ocp.__version__ if hasattr(ocp, "__version__") else "",
          "numpy": np.__version__, "python": platform.python_version()}


def export(workdir: str | os.PathLike, out: str | os.PathLike, which: str = "latest",
           average_last: int = 0, dtype: str = "float32") -> dict:
  """Writes an inference checkpoint of `workdir` to `out` (a new folder).

  Args:
    workdir: a training workdir (local or URL).
    out: the folder to write; it must not exist yet.
    which: "latest" (the newest step) or "best" (the step `best/` holds).
    average_last: K > 1 averages the newest K steps of `checkpoints/` (the
      run must have kept them: `keep_checkpoints >= K`); 0 or 1: no averaging.
    dtype: "float32" (bit-identical to the workdir's parameters when not
      averaged) or "bfloat16" (half the size).
  Returns the meta record written to `export.json`.
  """
  if dtype not in EXPORT_DTYPES:
    raise ExportError(f"dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
  if which not in ("latest", "best"):
    raise ExportError(f"which must be 'latest' or 'best', got {which!r}")
  if not isinstance(average_last, int) or average_last < 0:
    raise ExportError(f"average_last must be an integer >= 0, got {average_last!r}")
  if average_last > 1 and which == "best":
    raise ExportError("average_last averages the newest steps of checkpoints/; "
                      "it cannot be combined with which='best'")
  out = paths.as_path(out)
  if out.exists():
    raise ExportError(f"{out} exists already; exports are written to a new folder")
  if average_last > 1:
    steps, params, meta = average_last_steps(workdir, average_last)
    step = steps[-1]
  else:
    step, params, meta = ckpt_lib.load_for_inference(workdir, None, which)
    steps = [step]
  return write_export(out, params, meta, workdir, which, steps,
                      _final_metrics(workdir, step, steps if len(steps) > 1 else None), dtype)


def average_last_steps(workdir: str | os.PathLike, k: int) -> tuple[list[int], Any, dict]:
  """(the newest `k` steps of the workdir's `checkpoints/`, oldest first,
  their averaged parameters, the newest step's meta). `ExportError` when
  fewer than `k` steps were kept."""
  directory, steps = ckpt_lib.find_checkpoint(workdir, None, "latest")
  if len(steps) < k:
    raise ExportError(f"average_last={k} but {directory} holds {len(steps)} "
                      f"step(s) {sorted(steps)}; train with keep_checkpoints >= {k}")
  steps = sorted(steps[:k])
  loaded = [ckpt_lib.load_for_inference(workdir, s, "latest") for s in steps]
  return steps, average_params([p for _, p, _ in loaded]), loaded[-1][2]


def write_export(out: str | os.PathLike, params: Any, meta: dict, workdir: str | os.PathLike,
                 which: str, steps: Sequence[int], metrics: dict,
                 dtype: str = "float32") -> dict:
  """Writes `params` (of checkpoint `meta`, from `steps` of `workdir`,
  averaged when there are several) and their `metrics` as an export
  folder `out`; returns the record written to `export.json`."""
  out = paths.as_path(out)
  if dtype != "float32":
    params = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.dtype(dtype)), params)
  steps = [int(s) for s in steps]
  record = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "step": steps[-1],
      "source": {"workdir": os.fspath(workdir), "which": which, "steps": steps,
                 "averaged": len(steps) > 1},
      "dtype": dtype, "metrics": metrics, "versions": versions(),
      **{k: meta[k] for k in ("experiment", "model_config", "tokenizers", "buckets")
         if k in meta},
  }
  out.mkdir(parents=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out / PARAMS_DIR, params)
    checkpointer.wait_until_finished()  # the manifest below must see every file
  paths.write_text(out / META_FILE, json.dumps(record, indent=1, sort_keys=True))
  manifest.write(out)
  return record


def load_export(path: str | os.PathLike, verify: bool = True) -> tuple[int, dict, dict]:
  """(step, params as numpy, meta) of an export; `verify` checks every file
  against the manifest first (`ExportError` names the first that differs)."""
  path = paths.as_path(path)
  meta = manifest.read_record(path, META_FILE, FORMAT, FORMAT_VERSION, "export", ExportError)
  if verify:
    manifest.verify(path, ExportError)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(path / PARAMS_DIR)
  params = jax.tree.map(np.asarray, params)
  return int(meta["step"]), params, meta
