"""A PyTorch port of the tutorial model (bentrevett/pytorch-seq2seq, tutorial 4).

Written from the tutorial's description: time-major tensors, packed
bidirectional GRU encoder, attention Linear over `[s; h_j]`, padding masked
with -1e10, decoder GRU on `[embedding; context]`, output Linear over
`[output; context; embedding]`, the tutorial's `init_weights` (normal 0.01,
biases 0) and its teacher-forcing loop with one coin per step.

It is the reference for the parity tests and the PyTorch side of
`experiments/benchmark.py`; the state_dict keys are the tutorial's.
`enc_layers > 1` stacks bidirectional layers in the one `nn.GRU` (no dropout
between them, as in `flax_attn.encoder`); the bridge reads the last layer's
final states, so its keys gain `_l1`, `_l1_reverse`, ... as `convert` expects.
"""

from __future__ import annotations

import random

import torch
from torch import nn
import torch.nn.functional as F


class Encoder(nn.Module):

  def __init__(self, input_dim, emb_dim, enc_hid_dim, dec_hid_dim, dropout, n_layers=1):
    super().__init__()
    self.embedding = nn.Embedding(input_dim, emb_dim)
    self.rnn = nn.GRU(emb_dim, enc_hid_dim, num_layers=n_layers, bidirectional=True)
    self.fc = nn.Linear(enc_hid_dim * 2, dec_hid_dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, src, src_len):
    # src: [src_len, batch]; src_len: [batch] (CPU int64)
    embedded = self.dropout(self.embedding(src))
    packed = nn.utils.rnn.pack_padded_sequence(embedded, src_len.cpu(), enforce_sorted=False)
    packed_outputs, hidden = self.rnn(packed)
    outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_outputs, total_length=src.shape[0])
    # hidden: [2*n_layers, batch, enc_hid]; the last layer's forward and backward.
    hidden = torch.tanh(self.fc(torch.cat((hidden[-2], hidden[-1]), dim=1)))
    return outputs, hidden  # [src_len, batch, 2*enc_hid], [batch, dec_hid]


class Attention(nn.Module):

  def __init__(self, enc_hid_dim, dec_hid_dim):
    super().__init__()
    self.attn = nn.Linear(enc_hid_dim * 2 + dec_hid_dim, dec_hid_dim)
    self.v = nn.Linear(dec_hid_dim, 1, bias=False)

  def forward(self, hidden, encoder_outputs, mask):
    src_len = encoder_outputs.shape[0]
    hidden = hidden.unsqueeze(1).repeat(1, src_len, 1)        # [batch, src_len, dec_hid]
    encoder_outputs = encoder_outputs.permute(1, 0, 2)        # [batch, src_len, 2*enc_hid]
    energy = torch.tanh(self.attn(torch.cat((hidden, encoder_outputs), dim=2)))
    scores = self.v(energy).squeeze(2)
    scores = scores.masked_fill(mask == 0, -1e10)
    return F.softmax(scores, dim=1)                            # [batch, src_len]


class Decoder(nn.Module):

  def __init__(self, output_dim, emb_dim, enc_hid_dim, dec_hid_dim, dropout, attention):
    super().__init__()
    self.output_dim = output_dim
    self.attention = attention
    self.embedding = nn.Embedding(output_dim, emb_dim)
    self.rnn = nn.GRU(enc_hid_dim * 2 + emb_dim, dec_hid_dim)
    self.fc_out = nn.Linear(enc_hid_dim * 2 + dec_hid_dim + emb_dim, output_dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, token, hidden, encoder_outputs, mask):
    embedded = self.dropout(self.embedding(token.unsqueeze(0)))   # [1, batch, emb]
    a = self.attention(hidden, encoder_outputs, mask).unsqueeze(1)
    weighted = torch.bmm(a, encoder_outputs.permute(1, 0, 2)).permute(1, 0, 2)
    output, hidden = self.rnn(torch.cat((embedded, weighted), dim=2), hidden.unsqueeze(0))
    prediction = self.fc_out(torch.cat((output.squeeze(0), weighted.squeeze(0),
                                        embedded.squeeze(0)), dim=1))
    return prediction, hidden.squeeze(0), a.squeeze(1)


class Seq2Seq(nn.Module):

  def __init__(self, encoder, decoder, src_pad_idx):
    super().__init__()
    self.encoder = encoder
    self.decoder = decoder
    self.src_pad_idx = src_pad_idx

  def forward(self, src, src_len, trg, teacher_forcing_ratio=0.5):
    """src [src_len, batch], trg [trg_len, batch] (BOS first) -> outputs
    [trg_len, batch, vocab] with outputs[0] = 0, as in the tutorial."""
    trg_len, batch = trg.shape
    outputs = torch.zeros(trg_len, batch, self.decoder.output_dim, device=src.device)
    encoder_outputs, hidden = self.encoder(src, src_len)
    mask = (src != self.src_pad_idx).permute(1, 0)
    token = trg[0]
    for t in range(1, trg_len):
      output, hidden, _ = self.decoder(token, hidden, encoder_outputs, mask)
      outputs[t] = output
      teacher_force = random.random() < teacher_forcing_ratio
      token = trg[t] if teacher_force else output.argmax(1)
    return outputs

  @torch.no_grad()
  def greedy(self, src, src_len, bos_id, max_len):
    """Feeds back its argmax for `max_len` steps: tokens [batch, max_len]."""
    encoder_outputs, hidden = self.encoder(src, src_len)
    mask = (src != self.src_pad_idx).permute(1, 0)
    token = torch.full((src.shape[1],), bos_id, dtype=torch.long, device=src.device)
    out = []
    for _ in range(max_len):
      output, hidden, _ = self.decoder(token, hidden, encoder_outputs, mask)
      token = output.argmax(1)
      out.append(token)
    return torch.stack(out, dim=1)


def init_weights(m: nn.Module) -> None:
  for name, param in m.named_parameters():
    if "weight" in name:
      nn.init.normal_(param.data, mean=0, std=0.01)
    else:
      nn.init.constant_(param.data, 0)


def build(src_vocab=7853, trg_vocab=5893, emb=256, enc_hid=512, dec_hid=512, dropout=0.5,
          pad_id=1, seed=0, init_std=None, enc_layers=1) -> Seq2Seq:
  """The tutorial model (its default sizes); `init_std` replaces 0.01 in the
  init; `enc_layers` stacks bidirectional encoder GRUs."""
  torch.manual_seed(seed)
  attn = Attention(enc_hid, dec_hid)
  model = Seq2Seq(Encoder(src_vocab, emb, enc_hid, dec_hid, dropout, enc_layers),
                  Decoder(trg_vocab, emb, enc_hid, dec_hid, dropout, attn), pad_id)
  if init_std is None:
    model.apply(init_weights)
  else:
    for name, param in model.named_parameters():
      nn.init.normal_(param.data, mean=0, std=init_std)
  return model
