"""A second PyTorch peer of the tutorial model, with joeynmt-style hoisting.

`HoistedSeq2Seq(tutorial)` computes exactly the function of a
`torch_seq2seq.Seq2Seq` (the port of bentrevett/pytorch-seq2seq tutorial 4)
with the SAME parameter tensors: it registers the tutorial's `encoder` and
`decoder` as its own submodules, so its `state_dict` keys are the tutorial's,
`parameters()` yields the same `Parameter` objects (an optimiser step on one
is seen by the other) and `.train()` / `.eval()` reach both.

It differs only in how it orders the work, the way joeynmt's
`RecurrentDecoder` + `BahdanauAttention` do (`compute_proj_keys` once, the
target embedded before the loop, the output layer after it):

* the attention Linear over `[s; h_j]` is split by columns into the query
  part `W` (on `s`) and the key part `U` (on `h_j`); the keys `U h_j + b` are
  projected once per sentence, not once per step;
* under teacher forcing, the target embeddings (and their dropout), the
  embedding columns of the decoder GRU's input gates (`W_ih` split into its
  embedding and context columns) and, after the loop, the output projection
  over `[s_t; c_t; emb_t]` are each one batched op over all steps;
* inside the loop: the scores with the precomputed keys, the context, the
  context part of the input gates and the GRU recurrence, written out by hand
  in PyTorch's gate order (r, z, n) and formula.

The encoder is the tutorial's own module (packed bidirectional GRU, bridge).

Shape letters: S source length, B batch, T decoder steps (`trg_len - 1`),
E embedding, H encoder GRU size (its outputs are `2H`), D decoder GRU size
(= attention size), V target vocabulary. Tensors are time-major like the
tutorial's (`src_SxB`, `trg_TxB`).

Dropout: the tutorial draws the decoder's embedding dropout step by step
(`[1, B, E]` each); this peer draws it once (`[T, B, E]`). Both consume the
default generator in the same order (encoder, then the decoder steps in
turn), so with one seed the masks agree wherever CPU `bernoulli_` draws its
numbers serially (PyTorch's default CPU kernel); PyTorch's MKL path (Intel
CPUs) seeds MKL once per call instead, and there they differ.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

from flax_attn.reference import torch_seq2seq

MASK_VALUE = -1e10  # the tutorial's masked_fill value for padded source positions


def gru_cell(gi_Bx3D: torch.Tensor, h_BxD: torch.Tensor, w_hh_3DxD: torch.Tensor,
             b_hh_3D: torch.Tensor) -> torch.Tensor:
  """One step of PyTorch's GRU from precomputed input gates `W_ih x + b_ih`.

  Gate order r, z, n as in `nn.GRU`'s weights:
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h, computed as ATen does: n + z * (h - n).
  """
  gh_Bx3D = F.linear(h_BxD, w_hh_3DxD, b_hh_3D)
  i_r, i_z, i_n = gi_Bx3D.chunk(3, dim=1)
  h_r, h_z, h_n = gh_Bx3D.chunk(3, dim=1)
  r = torch.sigmoid(i_r + h_r)
  z = torch.sigmoid(i_z + h_z)
  n = torch.tanh(i_n + r * h_n)
  return n + z * (h_BxD - n)


class HoistedSeq2Seq(nn.Module):
  """The tutorial's `Seq2Seq` with hoisted keys, gates and output projection.

  Shares (does not copy) the wrapped model's parameters; drop-in for the
  benchmark's torch cases: `model(src, src_len, trg, teacher_forcing_ratio=1.0)`,
  `model.greedy(src, src_len, bos_id, max_len)`, `model.decoder.output_dim`.
  """

  def __init__(self, tutorial: nn.Module):
    super().__init__()
    self.encoder = tutorial.encoder   # the same modules: parameters are shared
    self.decoder = tutorial.decoder
    self.src_pad_idx = tutorial.src_pad_idx

  # --------------------------------------------------------------- pieces

  def _weights(self) -> dict[str, torch.Tensor]:
    """Column views (no copies, gradients reach the parameters) of the
    attention Linear `[D, D + 2H]` and the decoder GRU's `W_ih [3D, E + 2H]`."""
    dec = self.decoder
    d = dec.rnn.hidden_size
    e = dec.embedding.embedding_dim
    w_att = dec.attention.attn.weight
    w_ih = dec.rnn.weight_ih_l0
    return {
        "w_query_DxD": w_att[:, :d],     # on s_{t-1}: cat((hidden, enc_outputs)) order
        "w_key_Dx2H": w_att[:, d:],      # on h_j
        "b_att_D": dec.attention.attn.bias,
        "v_1xD": dec.attention.v.weight,
        "w_ih_emb_3DxE": w_ih[:, :e],    # GRU input is cat((embedded, weighted))
        "w_ih_ctx_3Dx2H": w_ih[:, e:],
        "b_ih_3D": dec.rnn.bias_ih_l0,
        "w_hh_3DxD": dec.rnn.weight_hh_l0,
        "b_hh_3D": dec.rnn.bias_hh_l0,
    }

  def encode(self, src_SxB: torch.Tensor, src_len_B: torch.Tensor, w: dict[str, torch.Tensor]):
    """Encoder outputs batch-major `[B, S, 2H]`, the keys `U h_j + b` `[B, S, D]`
    (projected once per sentence), the padding mask `[B, S]` (True = pad) and
    the initial decoder state `[B, D]`."""
    enc_SxBx2H, s0_BxD = self.encoder(src_SxB, src_len_B)
    enc_BxSx2H = enc_SxBx2H.transpose(0, 1).contiguous()
    keys_BxSxD = F.linear(enc_BxSx2H, w["w_key_Dx2H"], w["b_att_D"])
    pad_BxS = (src_SxB == self.src_pad_idx).transpose(0, 1)
    return enc_BxSx2H, keys_BxSxD, pad_BxS, s0_BxD

  @staticmethod
  def attend(s_BxD, enc_BxSx2H, keys_BxSxD, pad_BxS, w):
    """Additive attention with precomputed keys: the context `[B, 2H]`."""
    query_Bx1xD = F.linear(s_BxD, w["w_query_DxD"]).unsqueeze(1)
    energy_BxSxD = torch.tanh(query_Bx1xD + keys_BxSxD)
    scores_BxS = F.linear(energy_BxSxD, w["v_1xD"]).squeeze(2)
    a_BxS = F.softmax(scores_BxS.masked_fill(pad_BxS, MASK_VALUE), dim=1)
    return torch.bmm(a_BxS.unsqueeze(1), enc_BxSx2H).squeeze(1)

  # --------------------------------------------------------------- public

  def forward(self, src_SxB: torch.Tensor, src_len_B: torch.Tensor, trg_Tp1xB: torch.Tensor,
              teacher_forcing_ratio: float = 1.0) -> torch.Tensor:
    """Teacher-forced logits `[T+1, B, V]` with `[0] = 0`, as the tutorial's
    `forward(..., teacher_forcing_ratio=1.0)`: `trg_Tp1xB` is BOS first
    (`T >= 1`), step t = 1..T reads `trg[t-1]` and writes `outputs[t]`.

    Only teacher forcing 1.0 is hoistable (otherwise the next input depends on
    the previous logits); any other ratio raises rather than silently timing
    a different loop."""
    if teacher_forcing_ratio != 1.0:
      raise ValueError(f"HoistedSeq2Seq.forward is teacher forcing 1.0 only, got "
                       f"{teacher_forcing_ratio}; use the tutorial model for mixed feeding")
    dec = self.decoder
    w = self._weights()
    enc_BxSx2H, keys_BxSxD, pad_BxS, s_BxD = self.encode(src_SxB, src_len_B, w)

    # Before the loop, all steps at once: embeddings, dropout, their gate share.
    emb_TxBxE = dec.dropout(dec.embedding(trg_Tp1xB[:-1]))
    gi_emb_TxBx3D = F.linear(emb_TxBxE, w["w_ih_emb_3DxE"], w["b_ih_3D"])

    states, contexts = [], []
    for t in range(emb_TxBxE.shape[0]):
      c_Bx2H = self.attend(s_BxD, enc_BxSx2H, keys_BxSxD, pad_BxS, w)   # from s_{t-1}
      gi_Bx3D = gi_emb_TxBx3D[t] + F.linear(c_Bx2H, w["w_ih_ctx_3Dx2H"])
      s_BxD = gru_cell(gi_Bx3D, s_BxD, w["w_hh_3DxD"], w["b_hh_3D"])
      states.append(s_BxD)
      contexts.append(c_Bx2H)

    # After the loop: one output projection over [s_t; c_t; emb_t] for all steps.
    feats_TxBxF = torch.cat((torch.stack(states), torch.stack(contexts), emb_TxBxE), dim=2)
    logits_TxBxV = dec.fc_out(feats_TxBxF)
    return torch.cat((logits_TxBxV.new_zeros((1,) + logits_TxBxV.shape[1:]), logits_TxBxV))

  @torch.no_grad()
  def greedy(self, src_SxB: torch.Tensor, src_len_B: torch.Tensor, bos_id: int,
             max_len: int) -> torch.Tensor:
    """The tutorial's `greedy`: feeds back its argmax for `max_len` steps from
    `bos_id`; tokens `[B, max_len]`. Keys hoisted; the embedding, its gates and
    the output projection stay in the loop (the next input depends on them)."""
    dec = self.decoder
    w = self._weights()
    enc_BxSx2H, keys_BxSxD, pad_BxS, s_BxD = self.encode(src_SxB, src_len_B, w)
    w_ih_3DxF = dec.rnn.weight_ih_l0
    token_B = torch.full((src_SxB.shape[1],), bos_id, dtype=torch.long, device=src_SxB.device)
    out = []
    for _ in range(max_len):
      emb_BxE = dec.dropout(dec.embedding(token_B))
      c_Bx2H = self.attend(s_BxD, enc_BxSx2H, keys_BxSxD, pad_BxS, w)
      gi_Bx3D = F.linear(torch.cat((emb_BxE, c_Bx2H), dim=1), w_ih_3DxF, w["b_ih_3D"])
      s_BxD = gru_cell(gi_Bx3D, s_BxD, w["w_hh_3DxD"], w["b_hh_3D"])
      token_B = dec.fc_out(torch.cat((s_BxD, c_Bx2H, emb_BxE), dim=1)).argmax(1)
      out.append(token_B)
    return torch.stack(out, dim=1)


  @torch.no_grad()
  def beam(self, src_SxB: torch.Tensor, src_len_B: torch.Tensor, bos_id: int, beam_size: int,
           max_len: int) -> torch.Tensor:
    """Beam search in which no hypothesis ever finishes: each step extends all
    `beam_size` hypotheses of a sentence by every token (log-softmax), keeps
    the best `beam_size` of the `beam_size x V` by total log probability, and
    after `max_len` steps returns the best one, tokens `[B, max_len]`.

    EOS is an ordinary token here. With EOS's logit banned this is the search
    `flax_attn.beam.beam_search` makes (every hypothesis runs `max_len` steps,
    all of one length, so the length penalty cannot reorder them): the
    benchmark times the two that way, with the same beam size and steps.
    """
    dec, w = self.decoder, self._weights()
    enc_BxSx2H, keys_BxSxD, pad_BxS, s_BxD = self.encode(src_SxB, src_len_B, w)
    batch, k = src_SxB.shape[1], beam_size
    # Row b * k + j is hypothesis j of sentence b.
    enc_BxSx2H, keys_BxSxD, pad_BxS, s_BxD = (x.repeat_interleave(k, dim=0) for x in
                                              (enc_BxSx2H, keys_BxSxD, pad_BxS, s_BxD))
    token_B = torch.full((batch * k,), bos_id, dtype=torch.long, device=src_SxB.device)
    log_p_BxK = torch.full((batch, k), float("-inf"), device=src_SxB.device)
    log_p_BxK[:, 0] = 0.0  # one hypothesis to start from, not k copies of it
    seqs_BxT = torch.zeros((batch * k, 0), dtype=torch.long, device=src_SxB.device)
    first_row_B = torch.arange(batch, device=src_SxB.device)[:, None] * k
    for _ in range(max_len):
      emb_BxE = dec.dropout(dec.embedding(token_B))
      c_Bx2H = self.attend(s_BxD, enc_BxSx2H, keys_BxSxD, pad_BxS, w)
      gi_Bx3D = F.linear(torch.cat((emb_BxE, c_Bx2H), dim=1), dec.rnn.weight_ih_l0, w["b_ih_3D"])
      s_BxD = gru_cell(gi_Bx3D, s_BxD, w["w_hh_3DxD"], w["b_hh_3D"])
      log_probs_BxV = F.log_softmax(dec.fc_out(torch.cat((s_BxD, c_Bx2H, emb_BxE), dim=1)), dim=1)
      vocab = log_probs_BxV.shape[1]
      cand = (log_p_BxK.reshape(-1, 1) + log_probs_BxV).reshape(batch, k * vocab)
      log_p_BxK, index = cand.topk(k, dim=1)
      parent = (first_row_B + torch.div(index, vocab, rounding_mode="floor")).reshape(-1)
      token_B = (index % vocab).reshape(-1)
      s_BxD = s_BxD[parent]
      seqs_BxT = torch.cat((seqs_BxT[parent], token_B[:, None]), dim=1)
    return seqs_BxT.reshape(batch, k, max_len)[:, 0]


def build(**kwargs) -> tuple[nn.Module, HoistedSeq2Seq]:
  """`torch_seq2seq.build(**kwargs)` and its hoisted peer, sharing weights."""
  tutorial = torch_seq2seq.build(**kwargs)
  return tutorial, HoistedSeq2Seq(tutorial)


def maybe_compile(fn: Callable, *example_args: Any, **example_kwargs: Any) -> tuple[Callable, str]:
  """`torch.compile(fn)` (a module or a function), checked by one call on the
  example inputs, which is when inductor compiles.

  Returns `(compiled, "compiled; first call X.XX s")` when that call works,
  else `(fn, "<one line: why not>")`, never raising. The first backward through
  a compiled module compiles its backward graph too (not timed here).
  """
  if not hasattr(torch, "compile"):
    return fn, f"torch {torch.__version__} has no torch.compile"
  if not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cc", "gcc")):
    return fn, "torch.compile unavailable: no C++ compiler on PATH (inductor needs one)"
  try:
    compiled = torch.compile(fn)
    start = time.perf_counter()
    compiled(*example_args, **example_kwargs)
    seconds = time.perf_counter() - start
  except Exception as e:  # noqa: BLE001  (any failure means: use the eager model)
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return fn, f"torch.compile failed: {type(e).__name__}: {first}"
  return compiled, f"compiled; first call {seconds:.2f} s"
