"""Workdirs are local paths or URLs (`gs://bucket/run`): one place that says how.

Everything the project writes or reads under a workdir goes through
`etils.epath` (what Orbax itself uses), so a `gs://` workdir reaches the
bucket instead of becoming a local folder named `gs:`. Local relative paths
are made absolute (Orbax needs absolute paths); URLs are kept as they are.
Object stores cannot append or rename folders, so the helpers here only
write whole files and move folders by copying.
"""

from __future__ import annotations

import io
import os

from etils import epath


def _fresh_bucket_listings() -> None:
  """Makes gcsfs read folder listings from the bucket, never from its cache.

  Orbax writes a checkpoint's arrays through tensorstore, which bypasses
  gcsfs, so a listing gcsfs cached earlier in the process (say of `best/`
  when a resumed run restored it) hides the step folder tensorstore has just
  written, and Orbax's finalize fails with "Checkpoint directory does not
  exist". Listings are few (checkpoint steps, metadata), so the cache buys
  nothing here. Set as fsspec's default for `gs` filesystems created from now
  on; a user's own `fsspec.config.conf["gs"]` setting is left as it is.
  """
  try:
    import fsspec.config
  except ImportError:  # no fsspec: no gcsfs either, so no gs:// workdirs
    return
  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


_fresh_bucket_listings()


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike | epath.Path) -> epath.Path:
  """`path` as an `epath.Path`: URLs unchanged, local paths absolute."""
  if isinstance(path, epath.Path) and is_url(path):
    return path
  text = os.fspath(path)
  if not text:
    raise ValueError("empty path")
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def refresh(path: str | os.PathLike) -> None:
  """Forgets cached listings of `path`'s object store: needed only where a
  gcsfs instance caches them after all (one made before flax_attn was
  imported, or a user's `use_listings_cache`), else a long-lived process, a
  notebook kernel say, would not see checkpoints another process wrote since."""
  if not is_url(path):
    return
  from etils.epath import backend
  try:
    fs = backend.fsspec_backend.fs(os.fspath(path))  # the instance epath itself uses
  except (ImportError, ValueError):  # no fsspec for this scheme: nothing cached by it
    return
  fs.invalidate_cache()


def write_text(path: epath.Path, text: str) -> None:
  """Writes a whole file; a local file is replaced atomically (write + rename)."""
  path = as_path(path)
  if is_url(path):
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  os.replace(tmp, path)


def read_text(path: epath.Path) -> str:
  return as_path(path).read_text()


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
  """`fig.savefig` to a local path or a URL (rendered in memory first)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  as_path(path).write_bytes(buf.getvalue())


def copy_tree(src: epath.Path, dst: epath.Path) -> None:
  """Copies a folder file by file (object stores have no folder rename)."""
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      (dst / child.name).write_bytes(child.read_bytes())


def move_aside(src: epath.Path, dst: epath.Path) -> None:
  """Moves a folder: a rename on local disks, copy then delete on object stores."""
  if not is_url(src):
    os.rename(src, dst)
    return
  copy_tree(src, dst)
  src.rmtree()
