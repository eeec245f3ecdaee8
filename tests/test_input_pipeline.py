"""Bucketed batches: layout, determinism, resumable iterator, bounded widths."""

import numpy as np
import pytest

from flax_attn.input_pipeline import (TrainBatches, bucket_widths, eval_batches, example_widths,
                                      pad_batch, train_iterator)
from flax_attn.tokenizers import BOS_ID, EOS_ID, PAD_ID


def _data(n=100, seed=0):
  rng = np.random.default_rng(seed)
  src = [np.append(rng.integers(4, 30, rng.integers(1, 20)), EOS_ID).astype(np.int32)
         for _ in range(n)]
  trg = [rng.integers(4, 30, rng.integers(1, 15)).astype(np.int32) for _ in range(n)]
  return src, trg


def test_pad_batch_layout():
  b = pad_batch([np.array([5, 6, EOS_ID])], [np.array([7, 8])], width=5, batch_size=2)
  np.testing.assert_array_equal(b["src"][0], [5, 6, EOS_ID, PAD_ID, PAD_ID])
  np.testing.assert_array_equal(b["trg_in"][0], [BOS_ID, 7, 8, PAD_ID, PAD_ID])
  np.testing.assert_array_equal(b["trg_out"][0], [7, 8, EOS_ID, PAD_ID, PAD_ID])
  np.testing.assert_array_equal(b["weights"][0], [1, 1, 1, 0, 0])
  assert b["src_lengths"].tolist() == [3, 1] and b["weights"][1].sum() == 0
  with pytest.raises(ValueError, match="do not fit"):
    pad_batch([np.array([3])] * 3, None, 4, 2)


def test_epoch_covers_every_example_once_and_widths_are_bounded():
  src, trg = _data()
  buckets = bucket_widths(example_widths(src, trg), 3)
  tb = TrainBatches(src, trg, batch_size=16, buckets=buckets, seed=1)
  seen, widths = [], set()
  for i in range(tb.batches_per_epoch):
    b = tb[i]
    widths.add(b["src"].shape[1])
    n = int((b["weights"].sum(1) > 0).sum())
    seen += [tuple(r[:l]) for r, l in zip(b["src"][:n], b["src_lengths"][:n])]
  assert widths <= set(buckets) and len(buckets) <= 3
  assert sorted(seen) == sorted(tuple(s) for s in src)
  # A new epoch is a new order, the same plan for the same seed.
  assert not all(np.array_equal(tb[i]["src"], tb[i + tb.batches_per_epoch]["src"])
                 for i in range(tb.batches_per_epoch))
  tb2 = TrainBatches(src, trg, batch_size=16, buckets=buckets, seed=1)
  np.testing.assert_array_equal(tb[7]["src"], tb2[7]["src"])


def test_iterator_state_resumes():
  src, trg = _data()
  tb = TrainBatches(src, trg, batch_size=16, buckets=(8, 24), seed=0)
  it = train_iterator(tb)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expect = [next(it)["src"] for _ in range(3)]
  it2 = train_iterator(tb)
  it2.set_state(state)
  for e in expect:
    np.testing.assert_array_equal(next(it2)["src"], e)


def test_eval_batches_keep_every_index():
  src, trg = _data(37)
  got = []
  for ix, b in eval_batches(src, trg, 8, buckets=(8, 24)):
    assert b["src"].shape[0] == 8 and b["src"].shape[1] in (8, 24)
    for r, k in enumerate(ix):
      np.testing.assert_array_equal(b["src"][r, :len(src[k])], src[k])
    got += list(ix)
  assert sorted(got) == list(range(37))
