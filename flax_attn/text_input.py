"""Text lines in, for the command-line tools: UTF-8 checked, with line numbers.

* `read_lines(path, what)`: a whole file (local path or URL) as lines.
* `stream_batches(fd, max_lines)`: lines from a stream (stdin) in batches of
  those already waiting, so piped input is translated in batches and a line
  typed by hand is answered at once.

Bad input raises `BadInput` (a `ValueError`) with a one-line message naming
the file and line; the tools print it and exit with 2.
"""

from __future__ import annotations

import os
import select
from typing import Iterable, Iterator

from flax_attn import paths


class BadInput(ValueError):
  """Input the user must fix; the message is one line."""


def read_lines(path: str, what: str) -> list[str]:
  """The lines of a UTF-8 text file (no trailing newline kept; at least one)."""
  try:
    p = paths.as_path(path)
    if not p.exists():
      raise BadInput(f"{what} file {path} does not exist")
    if not p.is_file():
      raise BadInput(f"{what} file {path} is not a file")
    data = p.read_bytes()
  except (OSError, ValueError) as e:
    if isinstance(e, BadInput):
      raise
    raise BadInput(f"cannot read {what} file {path!r}: {e}") from None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise BadInput(f"{what} file {path} is not UTF-8 (line {line})") from None
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  if not lines:
    raise BadInput(f"{what} file {path} is empty")
  return lines


def _read_more(fd: int, pending: bytes) -> tuple[bytes, bool]:
  chunk = os.read(fd, 1 << 16)
  return pending + chunk, not chunk


def stream_batches(fd: int, max_lines: int, what: str = "stdin") -> Iterator[list[str]]:
  """Lines read from file descriptor `fd` (a pipe, terminal or file), as lists.

  Each list holds the whole lines that were already waiting when the
  previous one was answered (at least one, at most `max_lines`); the last
  line needs no newline. A line that is not UTF-8 raises `BadInput` naming
  its number, after the lines before it have been yielded.
  """
  if max_lines < 1:
    raise ValueError(f"max_lines must be >= 1, got {max_lines}")
  pending, eof, number = b"", False, 1
  while True:
    # Block until a whole line (or the end) is here, then take what else is ready.
    while b"\n" not in pending and not eof:
      pending, eof = _read_more(fd, pending)
    while (not eof and pending.count(b"\n") < max_lines
           and select.select([fd], [], [], 0)[0]):
      pending, eof = _read_more(fd, pending)
    *raws, pending = pending.split(b"\n")
    if eof and pending:
      raws, pending = raws + [pending], b""
    for start in range(0, len(raws), max_lines):
      lines = []
      for raw in raws[start:start + max_lines]:
        try:
          lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
          if lines:
            yield lines
          raise BadInput(f"{what} line {number + len(lines)} is not UTF-8") from None
      yield lines
      number += len(lines)
    if eof:
      return


def check_sentences(sentences) -> list[str]:
  """The sentences of a `translate()` call as a list; `TypeError` for a
  single string or a non-string (naming its position)."""
  if isinstance(sentences, str):
    raise TypeError("translate() takes a list of strings, not a single string")
  if not isinstance(sentences, Iterable):
    raise TypeError(f"translate() takes a list of strings, got {type(sentences).__name__}")
  sentences = list(sentences)
  for i, s in enumerate(sentences):
    if not isinstance(s, str):
      raise TypeError(f"sentence {i} is {type(s).__name__}, not str")
  return sentences
