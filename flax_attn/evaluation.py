"""Evaluation of a split, shared by the training run and `evaluate.py`.

`split_perplexity` sums the teacher-forced (and optionally free-running)
NLL of the references with a pmapped `steps.eval_step`; `evaluate_split`
adds the task's metrics of the decoded outputs (greedy or beam, as the
`DecodeConfig` says).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from flax_attn import from_config, parallel
from flax_attn import metrics as metrics_lib
from flax_attn.config import Seq2SeqConfig
from flax_attn.decode_config import DecodeConfig
from flax_attn.input_pipeline import eval_batches
from flax_attn.steps import eval_step


def pmapped_eval(model_config: Seq2SeqConfig):
  """`eval_step` pmapped: `p_eval(replicated_params, device_batch, free_running)`."""
  return parallel.pmap(
      lambda params, batch, fr: eval_step(params, batch, model_config=model_config,
                                          free_running=fr),
      donate_state=False, static_broadcasted_argnums=(2,))


def split_perplexity(p_eval, params, src_ids, trg_ids, batch_size: int, buckets=None,
                     free_running: bool = False, on_batch=None,
                     tutorial_batch_size: int = 128) -> dict:
  """Mean NLL per target token (`loss`) and its `ppl` of the pairs; when
  `free_running` (the model's own argmax fed back, as the tutorial
  measures), also `free_running_ppl` and `free_running_ppl_tutorial`, the
  same loss averaged the tutorial's way (`metrics.batch_mean_perplexity`
  over batches of `tutorial_batch_size`).
  `params` are replicated on the devices."""
  sums = {"nll": 0.0, "w": 0.0, "fr_nll": 0.0}
  fr_nll_N, weight_N = np.zeros(len(src_ids)), np.zeros(len(src_ids))
  for ix, batch in eval_batches(src_ids, trg_ids, batch_size, buckets):
    if on_batch is not None:
      on_batch()
    dev = parallel.device_batch(batch)
    out = parallel.unreplicate(p_eval(params, dev, False))
    sums["nll"] += float(out["nll_sum"])
    sums["w"] += float(out["weight_sum"])
    if free_running:
      fr = jax.device_get(parallel.unreplicate(p_eval(params, dev, True)))
      sums["fr_nll"] += float(fr["nll_sum"])
      fr_nll_N[ix], weight_N[ix] = fr["nll_B"][:len(ix)], fr["weight_B"][:len(ix)]
  result = {"loss": sums["nll"] / max(sums["w"], 1.0)}
  result["ppl"] = float(math.exp(min(result["loss"], 50.0)))
  if free_running:
    result["free_running_ppl"] = float(math.exp(min(sums["fr_nll"] / max(sums["w"], 1.0), 50.0)))
    result["free_running_ppl_tutorial"] = metrics_lib.batch_mean_perplexity(
        fr_nll_N, weight_N, [len(s) for s in src_ids], tutorial_batch_size)
  return result


def evaluate_split(config, params, translator, split, src_ids, trg_ids, buckets, p_eval,
                   max_examples: int = 0, decode: DecodeConfig | None = None,
                   free_running: bool = False, on_batch=None) -> tuple[dict, list[str]]:
  """Loss/perplexity (teacher forced and optionally free running) and the
  task metrics of one split, its outputs decoded with `decode` (default:
  greedy). `params` are replicated on the devices; `on_batch()` runs before
  every batch (it may raise `Preempted`). Returns (metrics, hypotheses)."""
  decode = decode or DecodeConfig()
  n = len(src_ids) if not max_examples else min(max_examples, len(src_ids))
  src_ids, trg_ids = src_ids[:n], trg_ids[:n]
  result = split_perplexity(p_eval, params, src_ids, trg_ids, config.eval_batch_size, buckets,
                            free_running, on_batch)
  hyps = [translator.trg_tokenizer.decode(ids)
          for ids in translator.translate_ids(src_ids, **decode.to_dict(),
                                              batch_size=config.eval_batch_size,
                                              on_batch=on_batch)]
  result.update(metrics_lib.task_metrics(config.task, hyps, split.references()[:n],
                                         from_config.target_language(config)))
  return result, hyps
