"""`MANIFEST.json`: the sha256 and size of every file in a folder one hands to
someone else (an export, a serving export), checked before it is read; and
the JSON record that says which format such a folder is."""

from __future__ import annotations

import hashlib
import json
import os

from flax_attn import paths

MANIFEST_FILE = "MANIFEST.json"


def _files(root) -> list:
  out = []
  for child in sorted(root.iterdir(), key=lambda p: p.name):
    out.extend(_files(child) if child.is_dir() else [child])
  return out


def digest(root) -> dict[str, dict]:
  """{relative path: {sha256, bytes}} of every file under `root` but the manifest."""
  root = paths.as_path(root)
  out = {}
  for f in _files(root):
    rel = os.path.relpath(os.fspath(f), os.fspath(root))
    if rel == MANIFEST_FILE:
      continue
    data = f.read_bytes()
    out[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
  return out


def write(root) -> None:
  """Writes `root/MANIFEST.json` for the files `root` holds now."""
  root = paths.as_path(root)
  paths.write_text(root / MANIFEST_FILE, json.dumps(digest(root), indent=1, sort_keys=True))


def verify(root, error: type[Exception]) -> None:
  """Raises `error` (one line, naming the first file that differs) unless
  every file under `root` matches its manifest and no file is missing or extra."""
  root = paths.as_path(root)
  try:
    want = json.loads(paths.read_text(root / MANIFEST_FILE))
  except (OSError, ValueError) as e:
    raise error(f"{root / MANIFEST_FILE} cannot be read: {e}") from None
  have = digest(root)
  for rel in sorted(set(want) | set(have)):
    if want.get(rel) != have.get(rel):
      what = ("is missing" if rel not in have else "is not in the manifest"
              if rel not in want else "does not match its checksum")
      raise error(f"{root / rel} {what}: the export is incomplete or was changed")


def read_record(root, name: str, fmt: str, version: int, what: str,
                error: type[Exception]) -> dict:
  """The JSON record `root/name` of a folder in format `fmt`, written by a
  format version <= `version`; else `error` (one line). `what` names the
  format in messages ("export", "serving export")."""
  root = paths.as_path(root)
  paths.refresh(root)
  try:
    record = json.loads(paths.read_text(root / name))
  except (OSError, ValueError) as e:
    raise error(f"{root / name} cannot be read: {e}") from None
  if record.get("format") != fmt:
    raise error(f"{root} is not a flax_attn {what} (format {record.get('format')!r})")
  if record.get("format_version", 0) > version:
    raise error(f"{root} is {what} format {record['format_version']}; this flax_attn "
                f"reads up to {version}: upgrade flax_attn")
  return record
