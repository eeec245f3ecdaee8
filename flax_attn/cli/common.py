"""What every command-line tool shares: one-line errors and absl's parser."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on one line to stderr and exits with 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is a one-line error with exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
