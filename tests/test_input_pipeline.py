"""Bucketed batches: layout, determinism, resumable iterator, bounded widths;
property tests of epoch coverage, padding weights and process slices."""

from unittest import mock

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_attn import parallel
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


# Property tests (hypothesis): random example lengths, batch sizes, buckets and seeds.

_PROPERTY = settings(max_examples=200, deadline=None, database=None)


@st.composite
def _datasets(draw):
  """(src, trg): src ids end with EOS (length >= 1), trg ids may be empty."""
  n = draw(st.integers(1, 40))
  src_lens = draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
  trg_lens = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  src = [np.append(rng.integers(4, 30, k - 1), EOS_ID).astype(np.int32) for k in src_lens]
  trg = [rng.integers(4, 30, k).astype(np.int32) for k in trg_lens]
  return src, trg


def _train_batches(data, batch_size, num_buckets, multiple, seed):
  src, trg = data
  buckets = bucket_widths(example_widths(src, trg), num_buckets, multiple)
  return TrainBatches(src, trg, batch_size=batch_size, buckets=buckets, seed=seed)


@_PROPERTY
@given(data=_datasets(), batch_size=st.integers(1, 12), num_buckets=st.integers(1, 4),
       multiple=st.sampled_from([1, 4]), seed=st.integers(0, 2**31), epoch=st.integers(0, 3))
def test_property_epoch_exactly_once_and_padding_weightless(data, batch_size, num_buckets,
                                                            multiple, seed, epoch):
  src, trg = data
  tb = _train_batches(data, batch_size, num_buckets, multiple, seed)
  plan = tb.plan(epoch)
  assert len(plan) == tb.batches_per_epoch
  assert sorted(np.concatenate([ix for ix, _ in plan]).tolist()) == list(range(len(src)))
  tokens = 0.0
  for j, (ix, width) in enumerate(plan):
    b = tb[epoch * tb.batches_per_epoch + j]
    assert b["src"].shape == (batch_size, width) and width in tb.buckets
    pos = np.arange(width)[None, :]
    # Source: the example's ids, PAD after its length; filler rows are [EOS], length 1.
    n_src = np.array([len(src[k]) for k in ix] + [1] * (batch_size - len(ix)))
    np.testing.assert_array_equal(b["src_lengths"], n_src)
    np.testing.assert_array_equal(b["src"] == PAD_ID, pos >= n_src[:, None])
    for r, k in enumerate(ix):
      np.testing.assert_array_equal(b["src"][r, :len(src[k])], src[k])
      np.testing.assert_array_equal(b["trg_out"][r, :len(trg[k]) + 1], np.append(trg[k], EOS_ID))
      np.testing.assert_array_equal(b["trg_in"][r, :len(trg[k]) + 1], np.insert(trg[k], 0, BOS_ID))
    # Weights are exactly 1 at real targets (tokens then EOS) and exactly 0 elsewhere:
    # at every padded position and on every filler row.
    n_trg = np.array([len(trg[k]) + 1 for k in ix] + [0] * (batch_size - len(ix)))
    real = pos < n_trg[:, None]
    np.testing.assert_array_equal(b["weights"], real.astype(np.float32))
    assert np.all(b["trg_out"][~real] == PAD_ID) and np.all(b["trg_out"][real] != PAD_ID)
    tokens += b["weights"].sum()
  assert tokens == sum(len(t) + 1 for t in trg)


@_PROPERTY
@given(data=_datasets(), processes=st.integers(1, 4), rows_per_process=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_property_process_slices_partition_global_batch(data, processes, rows_per_process,
                                                        seed):
  tb = _train_batches(data, processes * rows_per_process, 2, 4, seed)
  for i in range(min(tb.batches_per_epoch, 4)):
    batch = tb[i]
    batch["row"] = np.arange(processes * rows_per_process)   # identifies global rows
    parts = []
    for p in range(processes):
      with mock.patch.object(jax, "process_count", return_value=processes), \
          mock.patch.object(jax, "process_index", return_value=p):
        parts.append(parallel.process_slice(batch))
    rows = np.concatenate([part["row"] for part in parts])
    assert all(len(part["row"]) == rows_per_process for part in parts)
    assert sorted(rows.tolist()) == list(range(len(rows)))          # disjoint and covering
    for key, value in batch.items():                                # rows kept whole
      np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), value)
  if processes > 1:
    with mock.patch.object(jax, "process_count", return_value=processes), \
        mock.patch.object(jax, "process_index", return_value=0), \
        pytest.raises(ValueError, match="does not split"):
      parallel.process_slice({"src": np.zeros((processes * rows_per_process + 1, 3))})


def _padded_tokens(widths, buckets):
  return sum(next(b for b in buckets if b >= w) for w in widths)


@_PROPERTY
@given(widths=st.lists(st.integers(1, 40), min_size=1, max_size=40),
       num_buckets=st.integers(1, 5), multiple=st.sampled_from([1, 4]))
def test_property_bucket_widths_pad_to_the_fewest_tokens(widths, num_buckets, multiple):
  import itertools
  got = bucket_widths(np.array(widths), num_buckets, multiple)
  rounded = sorted({-(-w // multiple) * multiple for w in widths})
  assert len(got) <= num_buckets and got == tuple(sorted(got))
  assert got[-1] == rounded[-1] and all(b % multiple == 0 for b in got)
  # Against every choice of at most num_buckets - 1 widths below the largest.
  best = min(_padded_tokens(widths, c + (rounded[-1],))
             for q in range(min(num_buckets, len(rounded)))
             for c in itertools.combinations(rounded[:-1], q))
  assert _padded_tokens(widths, got) == best


def test_bucket_widths_cut_the_long_tail_quantiles_wasted():
  # 75 short examples and a long tail: the quantiles (1/3, 2/3, 1) give
  # (12, 48), which pads the whole tail to 48; the optimum splits the tail.
  widths = np.array([10] * 75 + list(range(21, 46)))
  got = bucket_widths(widths, 3)
  assert got == (12, 32, 48)
  assert _padded_tokens(widths, got) < _padded_tokens(widths, (12, 48))
  assert bucket_widths(np.array([5] * 10), 3) == (8,)
