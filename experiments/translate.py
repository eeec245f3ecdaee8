"""Translate with a checkpoint: arguments, or stdin line by line (streaming).

  python experiments/translate.py --workdir DIR [--beam_size K] [--plot out.png] [text ...]

One output line per input line, in order; an empty line gives an empty line.
With --plot, the attention of the first input is drawn to that PNG.
Inputs longer than the model's maximum source length are truncated (a
warning goes to stderr).
"""

import sys

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training workdir or checkpoint step directory")
flags.DEFINE_integer("beam_size", 1, "beam width (1: greedy)")
flags.DEFINE_float("alpha", 0.6, "GNMT length penalty exponent")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint of a workdir")
flags.DEFINE_string("plot", None, "write the first input's attention heatmap to this PNG")
flags.mark_flag_as_required("workdir")


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  from flax_attn import Translator, plot
  try:
    translator = Translator.load(FLAGS.workdir, which=FLAGS.which)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  texts = argv[1:]
  lines = iter(texts) if texts else (line.rstrip("\n") for line in sys.stdin)
  first = True
  for line in lines:
    print(translator.translate([line], beam_size=FLAGS.beam_size, alpha=FLAGS.alpha)[0],
          flush=True)
    if first and FLAGS.plot and line.strip():
      src_tokens, trg_tokens, weights = translator.attention(line)
      plot.attention_heatmap(src_tokens, trg_tokens, weights, FLAGS.plot)
    first = False


if __name__ == "__main__":
  app.run(main)
