"""The PyTorch peers' timed cases, and the weights both sides start from.

Peers (all from the same initial weights, each with its own copy to train):
  torch_tutorial           tests/torch_seq2seq.py, the tutorial's loop;
  torch_hoisted            tests/torch_hoisted.py, the same function with
                           joeynmt-style hoisting (keys once, embedding gates
                           and output projection outside the loop);
  torch_hoisted_compiled   that model under `torch.compile` (its forward for
                           training, its `greedy` for decoding), where
                           inductor works on this machine.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable

import numpy as np

from bench.harness import BOS, EOS, PAD, Case, Shapes, make_batch
from flax_attn.config import Seq2SeqConfig
from flax_attn.convert import params_from_torch

try:
  import torch
  import torch.nn.functional as F
  import torch_hoisted  # tests/torch_hoisted.py
  import torch_seq2seq  # tests/torch_seq2seq.py
except ImportError:
  torch = None

PEERS = ("torch_tutorial", "torch_hoisted", "torch_hoisted_compiled")


def torch_version() -> str | None:
  return None if torch is None else torch.__version__


def set_threads() -> int:
  """Both sides use every core: torch's intra-op pool; XLA CPU does so by default."""
  n = os.cpu_count() or 1
  if torch is not None:
    torch.set_num_threads(n)
  return n


@dataclasses.dataclass
class Models:
  """Each peer's model (own weights, equal at the start) and flax_attn's
  `(config, params)` converted from the same state_dict."""

  peers: dict[str, Any]
  config: Seq2SeqConfig
  params: Any
  compiled: dict[str, Callable] = dataclasses.field(default_factory=dict)


def build_models(shapes: Shapes, seed: int = 0) -> Models:
  if torch is None:
    raise ImportError("the benchmark needs torch for the PyTorch peers and their weights")
  tutorial = torch_seq2seq.build(src_vocab=shapes.src_vocab, trg_vocab=shapes.trg_vocab,
                                 emb=shapes.emb, enc_hid=shapes.hidden, dec_hid=shapes.hidden,
                                 dropout=shapes.dropout, pad_id=PAD, seed=seed)
  config, params = params_from_torch(tutorial.state_dict(), pad_id=PAD, bos_id=BOS, eos_id=EOS,
                                     dropout=shapes.dropout, dtype=shapes.dtype)
  hoisted = torch_hoisted.HoistedSeq2Seq(copy.deepcopy(tutorial))
  compiled = torch_hoisted.HoistedSeq2Seq(copy.deepcopy(tutorial))
  return Models(dict(torch_tutorial=tutorial, torch_hoisted=hoisted,
                     torch_hoisted_compiled=compiled), config, params)


def usable_peers(peers, log: Callable[[str], None]) -> tuple[tuple[str, ...], list[str]]:
  """The peers that can run here, and a note for each one that cannot."""
  if torch is None:
    return (), ["PyTorch peers skipped: torch is not installed"]
  notes = []
  if "torch_hoisted_compiled" in peers:
    tiny = Shapes(batch=2, src_len=3, trg_len=3, src_vocab=11, trg_vocab=9, emb=4, hidden=4)
    model = build_models(tiny).peers["torch_hoisted_compiled"]
    src, src_len, trg = torch_batch(make_batch(tiny))
    log("checking that torch.compile works here (a tiny model)")
    _, why = torch_hoisted.maybe_compile(model, src, src_len, trg)
    if not why.startswith("compiled"):
      peers = tuple(p for p in peers if p != "torch_hoisted_compiled")
      notes.append(f"torch_hoisted_compiled skipped: {why}")
  return tuple(peers), notes


def torch_batch(batch_np):
  """Time-major torch tensors: src `[S, B]`, lengths `[B]` (CPU int64), trg `[T+1, B]`."""
  return (torch.from_numpy(batch_np["src"].T.astype(np.int64)).contiguous(),
          torch.from_numpy(batch_np["src_lengths"].astype(np.int64)),
          torch.from_numpy(batch_np["trg"].T.astype(np.int64)).contiguous())


def _compiled(models: Models, peer: str, what: str) -> Callable:
  """The peer's callable for `what` ("forward" or "greedy"); compiled for the
  `_compiled` peer (once per model and what; inductor recompiles on new shapes)."""
  model = models.peers[peer]
  fn = model if what == "forward" else model.greedy
  if not peer.endswith("_compiled"):
    return fn
  key = what
  if key not in models.compiled:
    models.compiled[key] = torch.compile(fn)
  return models.compiled[key]


def train_case(models: Models, peer: str, batch_np, shapes: Shapes) -> Case:
  """forward (teacher forcing 1.0), masked cross entropy, backward, clip 1.0, Adam 1e-3."""
  model = models.peers[peer]
  forward = _compiled(models, peer, "forward")
  src, src_len, trg = torch_batch(batch_np)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  vocab = model.decoder.output_dim

  def fn():
    model.train()
    opt.zero_grad(set_to_none=True)
    out = forward(src, src_len, trg, teacher_forcing_ratio=1.0)  # [T+1, B, V], out[0] = 0
    loss = F.cross_entropy(out[1:].reshape(-1, vocab), trg[1:].reshape(-1), ignore_index=PAD)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()

  return Case(peer, "train", fn, shapes.tokens)


def greedy_case(models: Models, peer: str, batch_np, shapes: Shapes) -> Case:
  """Greedy decoding of `trg_len` steps under no_grad, eval mode."""
  model = models.peers[peer]
  greedy = _compiled(models, peer, "greedy")
  src, src_len, _ = torch_batch(batch_np)

  def fn():
    model.eval()
    with torch.no_grad():
      return greedy(src, src_len, BOS, shapes.trg_len)

  return Case(peer, "greedy", fn, shapes.tokens)
