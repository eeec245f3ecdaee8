"""A serving export of a trained model against its `Translator`: size, time, outputs.

  python experiments/bench/serving_check.py --workdir W --out DIR [--split val]
      [--data_dir D] [--beam_sentences N] [--beam_size K]

Writes `Translator.load(W).export_serving(DIR)`, then translates the split's
sources with both, greedy (all sentences) and with the exported beam (the
first N), each twice (the second call is timed: compiled), and prints one
JSON line: the export's bytes and seconds, and per decoding the sentences
whose outputs are equal and both times in seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import ml_collections

from flax_attn import from_config, manifest, paths
from flax_attn.serving import ServedTranslator
from flax_attn.translator import Translator


def _timed(fn):
  fn()  # compiles
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--split", default="val")
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--beam_sentences", type=int, default=256)
  ap.add_argument("--beam_size", type=int, default=None,
                  help="the exported beam's width (default: the config's)")
  args = ap.parse_args()

  translator = Translator.load(args.workdir)
  start = time.perf_counter()
  translator.export_serving(args.out, beam_size=args.beam_size)
  export_s = time.perf_counter() - start
  listing = manifest.digest(paths.as_path(args.out))
  served = ServedTranslator.load(args.out)

  config = ml_collections.ConfigDict(translator.meta["experiment"])
  if args.data_dir:
    config.data_dir = args.data_dir
  src = list(from_config.load_task(config)[args.split].src)
  result = {"workdir": args.workdir, "split": args.split, "bytes": sum(
      f["bytes"] for f in listing.values()), "files": len(listing),
      "export_s": round(export_s, 1), "beam_size": served.beam_size}
  cases = [("greedy", src, False, 1)]
  if served.beam_size > 1:
    cases.append((f"beam{served.beam_size}", src[:args.beam_sentences], True, served.beam_size))
  for name, sentences, beam, beam_size in cases:
    want, t_translator = _timed(lambda s=sentences, k=beam_size: translator.translate(s, beam_size=k))
    got, t_served = _timed(lambda s=sentences, b=beam: served.translate(s, beam=b))
    result[name] = {"sentences": len(sentences), "equal": sum(a == b for a, b in zip(want, got)),
                    "translator_s": round(t_translator, 2), "served_s": round(t_served, 2)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
