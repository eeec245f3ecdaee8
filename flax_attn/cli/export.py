"""Export a training workdir as an inference checkpoint to hand to someone else.

  python experiments/export.py --workdir W --out DIR [--which latest|best]
      [--average_last K] [--dtype float32|bfloat16]

DIR gets the parameters only (no optimizer state), the tokenizers, the model
and decode config, the task, the metrics the parameters were measured with,
the versions used and a manifest of file checksums (see flax_attn/export.py).
`evaluate.py --workdir DIR`, `translate.py --workdir DIR` and
`Translator.load(DIR)` read it, from a path or a gs:// URL. Prints one JSON
line: where it went, its size in bytes, the steps it holds.

Bad usage (a missing workdir, an existing DIR, too few checkpoints to
average) gives a one-line `error: ...` on stderr and exit code 2.
"""

import json

from absl import app, flags
from absl import logging as absl_logging

from flax_attn.cli.common import fail, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training workdir")
flags.DEFINE_string("out", None, "the export folder to write (must not exist)")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint of the workdir")
flags.DEFINE_integer("average_last", 0, "average the newest K steps of checkpoints/ (0: none)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the stored parameters")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  from flax_attn import export
  try:
    record = export.export(FLAGS.workdir, FLAGS.out, which=FLAGS.which,
                           average_last=FLAGS.average_last, dtype=FLAGS.dtype)
  except (FileNotFoundError, ValueError) as e:
    fail(str(e))
  manifest = json.loads(export.paths.read_text(export.paths.as_path(FLAGS.out)
                                               / export.MANIFEST_FILE))
  size = sum(f["bytes"] for f in manifest.values())
  print(json.dumps({"out": FLAGS.out, "bytes": size, "dtype": record["dtype"],
                    "step": record["step"], "steps": record["source"]["steps"]}))


def run() -> None:
  """The `flax-attn-export` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
