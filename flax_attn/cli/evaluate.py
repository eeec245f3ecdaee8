"""Evaluate a checkpoint: one JSON line of metrics, system output written to a file.

The line holds the task's metrics and, on a split of the task, the
teacher-forced and free-running perplexity of its references.

  python experiments/evaluate.py --workdir DIR [--split val|test|test2017]
      [--src FILE --ref FILE] [--beam_size K] [--alpha A] [--dtype bfloat16]
      [--which latest|best] [--step N] [--out FILE]

Decoding follows the `decode` group of the config the checkpoint was trained
with (for `multi30k`: beam 10, alpha 1.0), so with no decoding flags this
prints the figure that config publishes; each flag overrides its field.

Bad input (unknown or invalid flags, missing/empty/non-UTF-8 files,
mismatched line counts, an unknown split, a workdir without a compatible
checkpoint) gives a one-line `error: ...` on stderr and exit code 2.
"""

import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from flax_attn.cli.common import parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training workdir, checkpoint step directory or export (export.py)")
flags.DEFINE_string("data_dir", None, "where the task's files are, if not where the run found them (multi30k)")
flags.DEFINE_string("split", "test", "task split to evaluate (ignored with --src/--ref)")
flags.DEFINE_string("src", None, "source file, one sentence per line")
flags.DEFINE_string("ref", None, "reference file, aligned with --src")
flags.DEFINE_integer("beam_size", None, "beam width, 1: greedy (default: the run's config, decode.beam_size)")
flags.DEFINE_float("alpha", None, "GNMT length penalty exponent for beam search (default: decode.alpha)")
flags.DEFINE_float("max_len_ratio", None, "output limit ceil(ratio * source tokens + offset) (default: decode.max_len_ratio)")
flags.DEFINE_integer("max_len_offset", None, "see --max_len_ratio (default: decode.max_len_offset)")
flags.DEFINE_enum("which", "latest", ["latest", "best"], "which checkpoint of a workdir")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "inference dtype of weights and matmuls")
flags.DEFINE_integer("step", None, "checkpoint step (default: newest)")
flags.DEFINE_string("out", None, "where to write the system output (default: WORKDIR/<split>.beam<K>[.alpha<A>][.bfloat16].hyp.txt; for an export, ./<export name>.<split>...hyp.txt: an export is not written to)")
flags.mark_flag_as_required("workdir")


class UsageError(Exception):
  pass


def _read(path: str, what: str) -> list[str]:
  from flax_attn import text_input
  try:
    return text_input.read_lines(path, what)
  except text_input.BadInput as e:
    raise UsageError(str(e)) from None


def _translate_with_progress(translator, src: list[str], decode,
                             batch_size: int = 128) -> list[str]:
  """`translator.translate` with a progress bar on stderr (only on a terminal)."""
  import math

  import tqdm
  batches = math.ceil(sum(1 for s in src if s.strip()) / batch_size)
  with tqdm.tqdm(total=batches, unit="batch", desc=f"decoding (beam {decode.beam_size})",
                 disable=not sys.stderr.isatty(), leave=False) as bar:
    return translator.translate(src, **decode.to_dict(), batch_size=batch_size,
                                on_batch=lambda: bar.update(1))


DECODE_FLAGS = ("beam_size", "alpha", "max_len_ratio", "max_len_offset")


def _decode_overrides() -> dict:
  """The decoding flags given (None: the run's config decides), checked by the
  rules every decoder uses, before the (slower) checkpoint load."""
  from flax_attn import decode_config
  given = {name: FLAGS[name].value for name in DECODE_FLAGS}
  defaults = decode_config.DecodeConfig().to_dict()
  try:
    decode_config.check(**{k: defaults[k] if v is None else v for k, v in given.items()},
                        prefix="--")
  except ValueError as e:
    raise UsageError(str(e)) from None
  return given



def evaluate() -> dict:
  import ml_collections

  from flax_attn import Translator, from_config, metrics, paths
  from flax_attn import export as export_lib
  if (FLAGS.src is None) != (FLAGS.ref is None):
    raise UsageError("--src and --ref go together")
  overrides = _decode_overrides()
  if FLAGS.src is not None:  # checked before the (slower) checkpoint load
    src, ref = _read(FLAGS.src, "source"), _read(FLAGS.ref, "reference")
    if len(src) != len(ref):
      raise UsageError(f"{FLAGS.src} has {len(src)} lines but {FLAGS.ref} has {len(ref)}")
  try:
    translator = Translator.load(FLAGS.workdir, step=FLAGS.step, which=FLAGS.which,
                                 dtype=FLAGS.dtype)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e)) from None
  config = ml_collections.ConfigDict(translator.meta["experiment"])
  if FLAGS.data_dir is not None:
    config.data_dir = FLAGS.data_dir
  decode = translator.settings(**overrides)
  if FLAGS.src is not None:
    refs, name = [[r] for r in ref], paths.as_path(FLAGS.src).name
  else:
    try:
      splits = from_config.load_task(config)
    except (FileNotFoundError, ValueError) as e:
      raise UsageError(str(e)) from None
    if FLAGS.split not in splits:
      raise UsageError(f"task {config.task} has no split {FLAGS.split!r} (has {sorted(splits)})")
    split = splits[FLAGS.split]
    src, refs, name = split.src, split.references(), FLAGS.split
  hyps = _translate_with_progress(translator, src, decode)
  tag = decode.tag + ("" if FLAGS.dtype == "float32" else f".{FLAGS.dtype}")
  if FLAGS.out:
    out = paths.as_path(FLAGS.out)
  elif export_lib.is_export(FLAGS.workdir):
    # An export is checked against its manifest on every load (and may be
    # someone else's bucket): its output goes to the current folder instead.
    out = paths.as_path(os.getcwd()) / (
        f"{paths.as_path(FLAGS.workdir).name}.{name}{tag}.hyp.txt")
  else:
    out = paths.as_path(FLAGS.workdir) / f"{name}{tag}.hyp.txt"
  try:
    paths.write_text(out, "\n".join(hyps) + "\n")
  except OSError as e:
    raise UsageError(f"cannot write {out}: {e}") from None
  result = {"task": config.task, "split": name, "step": translator.step,
            "beam_size": decode.beam_size,
            "alpha": decode.alpha if decode.beam_size > 1 else None,
            "max_len_ratio": decode.max_len_ratio, "max_len_offset": decode.max_len_offset,
            "dtype": FLAGS.dtype, "examples": len(src),
            "output": str(out)}
  result.update(metrics.task_metrics(config.task, hyps, refs, from_config.target_language(config)))
  if FLAGS.src is None:  # a split of the task: its references are token ids too
    result.update(_perplexity(translator, config, split))
  return result


def _perplexity(translator, config, split) -> dict:
  """Teacher-forced and free-running perplexity of the split's targets."""
  from flax_attn import evaluation, parallel
  from flax_attn.input_pipeline import encode_pairs
  src_ids, trg_ids, _ = encode_pairs(split.src, split.trg, translator.src_tokenizer,
                                     translator.trg_tokenizer, config.max_src_len,
                                     config.max_trg_len)
  n = parallel.device_count()  # maybe not the training's: batches of a multiple of it
  batch_size = -(-config.eval_batch_size // n) * n
  out = evaluation.split_perplexity(evaluation.pmapped_eval(translator.config),
                                    parallel.replicate(translator.params), src_ids, trg_ids,
                                    batch_size, translator.meta.get("buckets"), free_running=True)
  return {k: out[k] for k in ("ppl", "free_running_ppl", "free_running_ppl_tutorial")}


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  from flax_attn import compilation_cache
  compilation_cache.enable()  # FLAX_ATTN_COMPILATION_CACHE=off to disable
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  try:
    print(json.dumps(evaluate()))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """The `flax-attn-evaluate` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
