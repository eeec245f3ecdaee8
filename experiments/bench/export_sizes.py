"""Size of each published config's export (`flax-attn-export`), float32 and bfloat16.

  python experiments/bench/export_sizes.py [--data_dir ../shared/data/multi30k] [CONFIG ...]

For each config it fits the tokenizers on the training split as a run does,
initialises the parameters and writes the export with `export.write_export`
to a temporary folder; it prints one JSON line per config: parameter count
and bytes of the whole folder (params/, export.json with the tokenizers,
MANIFEST.json). Orbax compresses the arrays, so trained parameters take a
little more or less room than initialised ones of the same shapes (the
trained `multi30k_en_de` export: 50,270,469 bytes in float32, 1.0 % more than
this script's figure), and a trained run's export.json also holds its final
metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np

from flax_attn import tokenizers as tok_lib
from flax_attn import configs, from_config
from flax_attn import export as export_lib
from flax_attn.model import init_params

PUBLISHED = ("dates", "g2p", "multi30k", "multi30k_en_de", "multi30k_tutorial")


def folder_bytes(root: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def sizes(name: str, data_dir: str) -> dict:
  config = configs.load(name)
  config.data_dir = data_dir
  train = from_config.load_task(config)["train"]
  src_tok, trg_tok = from_config.fit_tokenizers(config, train)
  model_config = from_config.model_config(config, src_tok.vocab_size, trg_tok.vocab_size)
  params = jax.device_get(init_params(jax.random.PRNGKey(0), model_config))
  meta = {"experiment": json.loads(config.to_json_best_effort()),
          "model_config": model_config.to_dict(),
          "tokenizers": {"src": tok_lib.to_json(src_tok),
                         "trg": tok_lib.to_json(trg_tok)}, "buckets": []}
  row = {"config": name, "params": int(sum(np.size(x) for x in jax.tree.leaves(params)))}
  with tempfile.TemporaryDirectory() as tmp:
    for dtype in export_lib.EXPORT_DTYPES:
      out = os.path.join(tmp, dtype)
      export_lib.write_export(out, params, meta, "(initialised)", "latest", [0], {}, dtype)
      row[f"{dtype}_bytes"] = folder_bytes(out)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data/multi30k")
  parser.add_argument("configs", nargs="*", default=PUBLISHED)
  args = parser.parse_args()
  for name in args.configs:
    print(json.dumps(sizes(name, os.path.abspath(args.data_dir))), flush=True)


if __name__ == "__main__":
  main()
