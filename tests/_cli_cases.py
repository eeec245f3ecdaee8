"""Runs one command-line tool on many argument lists in one process, for the
error-message tests of test_cli.py (one process per tool, not per message):

  python tests/_cli_cases.py TOOL CASES.json

TOOL is a module of `flax_attn.cli` (train, evaluate, translate, export);
CASES.json a list of argument lists. Each case is parsed and run as
`absl.app.run` would (the tool's own flag parser, then `main`), with stdout
and stderr captured; an uncaught exception is exit code 1 with its
traceback, as in a process of its own. Prints one JSON list of
[exit code, stdout, stderr].
"""

import importlib
import json
import os
import sys
import tempfile
import traceback

from absl import flags


def run_case(module, tool: str, args: list[str]) -> list:
  flags.FLAGS.unparse_flags()
  sys.argv = [tool, *args]  # ml_collections' config flag reads its overrides from here
  parse = getattr(module, "_parse_flags", None) or module.parse_flags
  rc = 0
  # Capture the file descriptors themselves, as a process of its own would
  # have them (faulthandler and C libraries write there, not to sys.stderr).
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
      module.main(parse(list(sys.argv)))
    except SystemExit as e:
      rc = e.code if isinstance(e.code, int) else 1
    except Exception:  # noqa: BLE001 - reported as a separate process would
      traceback.print_exc()
      rc = 1
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])
    texts = []
    for f in (out, err):
      f.seek(0)
      texts.append(f.read().decode("utf-8", "replace"))
  return [rc, *texts]


def main() -> None:
  tool, cases_file = sys.argv[1:3]
  module = importlib.import_module(f"flax_attn.cli.{tool}")
  with open(cases_file) as f:
    cases = json.load(f)
  print(json.dumps([run_case(module, tool, args) for args in cases]))


if __name__ == "__main__":
  main()
