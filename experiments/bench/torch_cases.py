"""The PyTorch peers' timed cases, and the weights both sides start from.

Peers (all from the same initial weights, each with its own copy to train):
  torch_tutorial           flax_attn.reference.torch_seq2seq, the tutorial's loop;
  torch_hoisted            flax_attn.reference.torch_hoisted, the same function with
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
  from flax_attn.reference import torch_hoisted, torch_seq2seq
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
  device: str = "cpu"


def sync(device: str) -> None:
  """Waits for the device's queued work (a no-op on the CPU, where torch is synchronous)."""
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def set_fp32_matmul(mode: str) -> None:
  """float32 matmul arithmetic on a GPU, the same for both libraries: "ieee"
  (true float32) or "tf32" (TensorFloat-32 inputs, float32 accumulation);
  "" leaves each library's own default (jax: TF32 allowed; torch: cuBLAS
  float32, cuDNN TF32)."""
  if not mode:
    return
  if mode not in ("ieee", "tf32"):
    raise ValueError(f"fp32_matmul must be '', 'ieee' or 'tf32', got {mode!r}")
  import jax
  jax.config.update("jax_default_matmul_precision", "highest" if mode == "ieee" else "tensorfloat32")
  if torch is not None:
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


def fp32_matmul_settings() -> dict[str, Any]:
  """What each library will do with a float32 matmul, for the report."""
  import jax
  out = {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}
  if torch is not None:
    out.update(torch_cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
               torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
  return out


def build_models(shapes: Shapes, seed: int = 0, device: str = "cpu") -> Models:
  if torch is None:
    raise ImportError("the benchmark needs torch for the PyTorch peers and their weights")
  tutorial = torch_seq2seq.build(src_vocab=shapes.src_vocab, trg_vocab=shapes.trg_vocab,
                                 emb=shapes.emb, enc_hid=shapes.hidden, dec_hid=shapes.hidden,
                                 dropout=shapes.dropout, pad_id=PAD, seed=seed)
  config, params = params_from_torch(tutorial.state_dict(), pad_id=PAD, bos_id=BOS, eos_id=EOS,
                                     dropout=shapes.dropout, dtype=shapes.dtype)
  hoisted = torch_hoisted.HoistedSeq2Seq(copy.deepcopy(tutorial))
  compiled = torch_hoisted.HoistedSeq2Seq(copy.deepcopy(tutorial))
  peers = dict(torch_tutorial=tutorial, torch_hoisted=hoisted, torch_hoisted_compiled=compiled)
  return Models({k: m.to(device) for k, m in peers.items()}, config, params, device=device)


def usable_peers(peers, log: Callable[[str], None],
                 device: str = "cpu") -> tuple[tuple[str, ...], list[str]]:
  """The peers that can run here, and a note for each one that cannot."""
  if torch is None:
    return (), ["PyTorch peers skipped: torch is not installed"]
  notes = []
  if "torch_hoisted_compiled" in peers:
    tiny = Shapes(batch=2, src_len=3, trg_len=3, src_vocab=11, trg_vocab=9, emb=4, hidden=4)
    model = build_models(tiny, device=device).peers["torch_hoisted_compiled"]
    src, src_len, trg = torch_batch(make_batch(tiny), device)
    log("checking that torch.compile works here (a tiny model)")
    _, why = torch_hoisted.maybe_compile(model, src, src_len, trg)
    if not why.startswith("compiled"):
      peers = tuple(p for p in peers if p != "torch_hoisted_compiled")
      notes.append(f"torch_hoisted_compiled skipped: {why}")
  return tuple(peers), notes


def torch_batch(batch_np, device: str = "cpu"):
  """Time-major torch tensors: src `[S, B]`, lengths `[B]` (CPU int64, as
  `pack_padded_sequence` wants them), trg `[T+1, B]`; src and trg on `device`."""
  return (torch.from_numpy(batch_np["src"].T.astype(np.int64)).contiguous().to(device),
          torch.from_numpy(batch_np["src_lengths"].astype(np.int64)),
          torch.from_numpy(batch_np["trg"].T.astype(np.int64)).contiguous().to(device))


def _compiled(models: Models, peer: str, what: str) -> Callable:
  """The peer's callable for `what` ("forward", "greedy" or "beam"); compiled
  for the `_compiled` peer (once per model and what; inductor recompiles on new
  shapes)."""
  model = models.peers[peer]
  fn = model if what == "forward" else getattr(model, what)
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
  src, src_len, trg = torch_batch(batch_np, models.device)
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
    return loss.item()  # waits for the device

  return Case(peer, "train", fn, shapes.tokens)


def greedy_case(models: Models, peer: str, batch_np, shapes: Shapes) -> Case:
  """Greedy decoding of `trg_len` steps under no_grad, eval mode."""
  model = models.peers[peer]
  greedy = _compiled(models, peer, "greedy")
  src, src_len, _ = torch_batch(batch_np, models.device)

  def fn():
    model.eval()
    with torch.no_grad():
      out = greedy(src, src_len, BOS, shapes.trg_len)
    sync(models.device)
    return out

  return Case(peer, "greedy", fn, shapes.tokens)


BEAM_PEERS = ("torch_hoisted",)  # the tutorial has no beam search; compiling the loop is not tried


def beam_case(models: Models, peer: str, batch_np, shapes: Shapes, beam_size: int) -> Case:
  """`HoistedSeq2Seq.beam`: `beam_size` hypotheses for exactly `trg_len` steps
  with EOS's logit banned, as `flax_cases.beam_case` decodes (no_grad, eval)."""
  model = models.peers[peer]
  beam = _compiled(models, peer, "beam")
  src, src_len, _ = torch_batch(batch_np, models.device)
  eos_bias = model.decoder.fc_out.bias

  def fn():
    model.eval()
    with torch.no_grad():
      saved = eos_bias[EOS].item()
      eos_bias[EOS] = -1e9
      try:
        out = beam(src, src_len, BOS, beam_size, shapes.trg_len)
      finally:
        eos_bias[EOS] = saved
    sync(models.device)
    return out

  return Case(peer, "beam", fn, shapes.tokens, extra={"beam_size": beam_size,
                                                       "max_len": shapes.trg_len,
                                                       "eos_banned": True})
