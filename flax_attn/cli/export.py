"""Export a training workdir as an inference checkpoint to hand to someone else.

  python experiments/export.py --workdir W --out DIR [--which latest|best]
      [--average_last K] [--dtype float32|bfloat16]
  python experiments/export.py --workdir W --out DIR --serving [--which ...] [--dtype ...]

DIR gets the parameters only (no optimizer state), the tokenizers, the model
and decode config, the task, the metrics the parameters were measured with,
the versions used and a manifest of file checksums (see flax_attn/export.py).
`evaluate.py --workdir DIR`, `translate.py --workdir DIR` and
`Translator.load(DIR)` read it, from a path or a gs:// URL. Prints one JSON
line: where it went, its size in bytes, the steps it holds.

`--serving` writes a serving export instead (flax_attn/serving.py): the
greedy and beam decoders with the config's decoding settings as serialized
StableHLO, which `flax_attn.serving.ServedTranslator` runs without the
model's code. W may be a workdir or an export (to serve an average, export
with --average_last first, then --serving from that export).

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
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the stored parameters (with --serving, default: the source's)")
flags.DEFINE_bool("serving", False, "write a serving export (jax.export modules) instead")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  from flax_attn import export
  if FLAGS.serving:
    _serving()
    return
  try:
    record = export.export(FLAGS.workdir, FLAGS.out, which=FLAGS.which,
                           average_last=FLAGS.average_last, dtype=FLAGS.dtype)
  except (FileNotFoundError, ValueError) as e:
    fail(str(e))
  print(json.dumps({"out": FLAGS.out, "bytes": _bytes(FLAGS.out), "dtype": record["dtype"],
                    "step": record["step"], "steps": record["source"]["steps"]}))


def _bytes(out: str) -> int:
  """The size of the folder `out`, from its manifest."""
  from flax_attn import manifest, paths
  listing = json.loads(paths.read_text(paths.as_path(out) / manifest.MANIFEST_FILE))
  return sum(f["bytes"] for f in listing.values())


def _serving() -> None:
  from flax_attn.serving import ServingError
  from flax_attn.translator import Translator
  if FLAGS.average_last > 1:
    fail("--serving does not average: export with --average_last first, then --serving "
         "from that export")
  try:
    # Without --dtype, a bfloat16 export stays bfloat16 (Translator.load's rule).
    translator = Translator.load(FLAGS.workdir, which=FLAGS.which,
                                 dtype=FLAGS.dtype if FLAGS["dtype"].present else None)
    record = translator.export_serving(FLAGS.out)
  except (FileNotFoundError, ValueError, ServingError) as e:
    fail(str(e))
  print(json.dumps({"out": FLAGS.out, "bytes": _bytes(FLAGS.out), "serving": True,
                    "dtype": ",".join(sorted(set(record["params"].values()))), "step": record["step"],
                    "src_widths": [b["src_width"] for b in record["buckets"]],
                    "beam_size": record["decode"]["beam_size"]}))


def run() -> None:
  """The `flax-attn-export` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
