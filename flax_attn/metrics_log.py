"""`metrics.jsonl`: one JSON row per log, evaluation and final result.

Rows are kept in memory and the file is written whole (object stores such
as `gs://` cannot append; a local file is appended to). On a resume from
step S, rows after S and the final-evaluation rows are dropped first, since
the resumed run logs them again: the file never holds duplicates. Only the
main process writes.
"""

from __future__ import annotations

import json

from etils import epath

from flax_attn import paths


class MetricsLog:

  def __init__(self, path: epath.Path, resume_step: int | None, enabled: bool = True):
    self.path, self.enabled = paths.as_path(path), enabled
    self.rows: list[dict] = []
    if not enabled:
      return
    if resume_step is not None and self.path.exists():
      rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
      self.rows = [r for r in rows if r.get("step", 0) <= resume_step and not r.get("final")]
    self._rewrite()

  def _rewrite(self) -> None:
    paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

  def drop(self, predicate) -> None:
    """Removes the rows for which `predicate(row)` holds."""
    if self.enabled:
      self.rows = [r for r in self.rows if not predicate(r)]
      self._rewrite()

  def write(self, row: dict) -> None:
    if not self.enabled:
      return
    self.rows.append(row)
    if paths.is_url(self.path):
      self._rewrite()
    else:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
