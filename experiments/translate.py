"""Translate with a checkpoint: arguments, or stdin line by line (streaming).

  python experiments/translate.py --workdir DIR [--beam_size K] [--plot out.png] [text ...]

One output line per input line, in order; an empty line gives an empty line.
With --plot, the attention of the first input is drawn to that PNG.
Inputs longer than the model's maximum source length are truncated (a
warning goes to stderr). Bad usage (unknown or invalid flags, a workdir
without a checkpoint, a stdin line that is not UTF-8) gives a one-line
`error: ...` on stderr and exit code 2; lines before a bad stdin line have
already been answered.
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


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, but a bad flag is a one-line error with exit code 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))


def _stdin_lines():
  """stdin line by line as it arrives, each decoded as UTF-8 here (so a bad
  line is reported by number rather than silently mangled)."""
  for number, raw in enumerate(sys.stdin.buffer, 1):
    try:
      yield raw.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError:
      _fail(f"stdin line {number} is not UTF-8")


def _arg_lines(texts):
  for number, text in enumerate(texts, 1):
    try:
      text.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
    except UnicodeEncodeError:
      _fail(f"argument {number} is not UTF-8")
    yield text


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  if FLAGS.beam_size < 1:
    _fail(f"--beam_size must be >= 1, got {FLAGS.beam_size}")
  if not FLAGS.alpha >= 0:
    _fail(f"--alpha must be >= 0, got {FLAGS.alpha}")
  from flax_attn import Translator, plot
  try:
    translator = Translator.load(FLAGS.workdir, which=FLAGS.which)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  texts = argv[1:]
  lines = _arg_lines(texts) if texts else _stdin_lines()
  first = True
  for line in lines:
    print(translator.translate([line], beam_size=FLAGS.beam_size, alpha=FLAGS.alpha)[0],
          flush=True)
    if first and FLAGS.plot and line.strip():
      src_tokens, trg_tokens, weights = translator.attention(line)
      try:
        plot.attention_heatmap(src_tokens, trg_tokens, weights, FLAGS.plot)
      except OSError as e:
        _fail(f"cannot write --plot {FLAGS.plot}: {e}")
    first = False


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
