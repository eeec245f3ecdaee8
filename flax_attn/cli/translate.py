"""Translate with a checkpoint: arguments, or stdin (streaming).

  python experiments/translate.py --workdir DIR [--beam_size K] [--alpha A] [--n_best N]
      [--scores] [--dtype bfloat16] [--plot out.png] [text ...]

Decoding follows the `decode` group of the config the checkpoint was trained
with (for `multi30k`: beam 10, alpha 1.0); each flag overrides its field.

One output line per input line, in order; an empty line gives an empty line.
Lines already waiting on stdin are translated together (up to --batch_size
at a time); a line that arrives alone is answered at once. The parameters
are loaded onto the device once.

With --n_best N (<= --beam_size) or --scores, each input line gives N lines
`LINE<TAB>[SCORE<TAB>]TRANSLATION`: LINE is the input's 0-based number,
SCORE the length-penalised log probability beam search ranks by (as
fairseq's interactive `H-` lines). An empty input line decodes nothing: its
rows have an empty SCORE and an empty translation.

With --plot, the attention of the first input is drawn to that PNG.
Inputs longer than the model's maximum source length are truncated (a
warning goes to stderr). Bad usage (unknown or invalid flags, a workdir
without a checkpoint, a stdin line that is not UTF-8) gives a one-line
`error: ...` on stderr and exit code 2; lines before a bad stdin line have
already been answered.
"""

import math
import sys

from absl import app, flags
from absl import logging as absl_logging

from flax_attn.cli.common import fail, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training workdir, checkpoint step directory or export (export.py)")
flags.DEFINE_integer("beam_size", None, "beam width, 1: greedy (default: the run's config, decode.beam_size)")
flags.DEFINE_float("alpha", None, "GNMT length penalty exponent (default: decode.alpha)")
flags.DEFINE_integer("n_best", 1, "print this many best translations per input (<= beam_size)")
flags.DEFINE_bool("scores", False, "print each translation's score")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "inference dtype of weights and matmuls")
flags.DEFINE_integer("batch_size", 64, "most stdin lines translated together")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint of a workdir")
flags.DEFINE_string("plot", None, "write the first input's attention heatmap to this PNG")
flags.mark_flag_as_required("workdir")


def _arg_lines(texts):
  for number, text in enumerate(texts, 1):
    try:
      text.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
    except UnicodeEncodeError:
      fail(f"argument {number} is not UTF-8")
  return [list(texts)]


def _check_flags():
  """Flags alone, by the rules every decoder uses (before the checkpoint loads)."""
  from flax_attn import decode_config
  d = decode_config.DecodeConfig()
  try:
    decode_config.check(d.beam_size if FLAGS.beam_size is None else FLAGS.beam_size,
                        d.alpha if FLAGS.alpha is None else FLAGS.alpha,
                        n_best=FLAGS.n_best if FLAGS.beam_size is not None else 1, prefix="--")
  except ValueError as e:
    fail(str(e))
  if FLAGS.batch_size < 1:
    fail(f"--batch_size must be >= 1, got {FLAGS.batch_size}")


def _translate_batch(translator, decode, lines: list[str], first_number: int) -> None:
  absl_logging.info("translating a batch of %d line(s)", len(lines))
  if FLAGS.n_best == 1 and not FLAGS.scores:
    for out in translator.translate(lines, **decode.to_dict()):
      print(out)
  else:
    nbest = translator.translate_nbest(lines, n_best=FLAGS.n_best, **decode.to_dict())
    for number, hyps in enumerate(nbest, first_number):
      for text, score in hyps:
        if not FLAGS.scores:
          print(f"{number}\t{text}")
        else:  # an empty line was not decoded: no score
          print(f"{number}\t{'' if math.isnan(score) else f'{score:.4f}'}\t{text}")
  sys.stdout.flush()


def main(argv):
  if not FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  from flax_attn import compilation_cache
  compilation_cache.enable()  # FLAX_ATTN_COMPILATION_CACHE=off to disable
  _check_flags()
  from flax_attn import Translator
  from flax_attn import text_input as lines_lib
  try:
    translator = Translator.load(FLAGS.workdir, which=FLAGS.which, dtype=FLAGS.dtype)
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:
    fail(str(e))
  decode = translator.settings(beam_size=FLAGS.beam_size, alpha=FLAGS.alpha)
  if not FLAGS.n_best <= decode.beam_size:
    fail(f"--n_best must be between 1 and --beam_size ({decode.beam_size}, the run's "
          f"decode.beam_size), got {FLAGS.n_best}")
  texts = argv[1:]
  batches = _arg_lines(texts) if texts else lines_lib.stream_batches(sys.stdin.fileno(),
                                                                     FLAGS.batch_size)
  number = 0
  try:
    for lines in batches:
      _translate_batch(translator, decode, lines, number)
      if number == 0 and FLAGS.plot and lines[0].strip():
        _plot(translator, lines[0])
      number += len(lines)
  except lines_lib.BadInput as e:
    fail(str(e))


def _plot(translator, line: str) -> None:
  from flax_attn import plot
  src_tokens, trg_tokens, weights = translator.attention(line)
  try:
    plot.attention_heatmap(src_tokens, trg_tokens, weights, FLAGS.plot)
  except OSError as e:
    fail(f"cannot write --plot {FLAGS.plot}: {e}")


def run() -> None:
  """The `flax-attn-translate` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
