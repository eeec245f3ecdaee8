"""The measuring harness: shapes, FLOP counts, timed cases and random batches.

A `Case` is one (implementation, what) pair whose `fn()` runs one step to
completion; `measure` times several cases one after another, each in a block
of back-to-back calls (A, A, A, B, B, B).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import numpy as np

PAD, BOS, EOS = 1, 2, 3
RECORD_KEYS = ("impl", "what", "tokens_per_s", "ms_per_step", "compile_s", "peak_rss_mb")


@dataclasses.dataclass(frozen=True)
class Shapes:
  """Model and batch sizes (defaults: the tutorial's)."""

  batch: int = 128
  src_len: int = 24
  trg_len: int = 24
  src_vocab: int = 7853
  trg_vocab: int = 5893
  emb: int = 256
  hidden: int = 512
  dropout: float = 0.5
  dtype: str = "float32"  # flax_attn's matmul dtype (torch stays float32)

  @property
  def tokens(self) -> int:
    return self.batch * self.trg_len


# ---- FLOPs ------------------------------------------------------------------------------


def model_flops(batch: int, src_len: int, trg_len: int, emb: int = 256, enc_hidden: int = 512,
                dec_hidden: int = 512, attn: int | None = None, trg_vocab: int = 5893,
                hoisted: bool = True) -> dict[str, float]:
  """Matmul FLOPs of one forward pass, by component (2 FLOPs per multiply-add).

  `hoisted=True` is flax_attn: the keys `U h_j` once per sentence, the query
  `W s` once per step. `hoisted=False` is the tutorial's PyTorch code, which
  applies the attention Linear to `[s; h_j]` at every (step, source position).
  Adds `forward`, `train` (= 3 x forward) and the same per target token.
  """
  b, s, t, e, he, hd = batch, src_len, trg_len, emb, enc_hidden, dec_hidden
  a = attn or hd
  m = 2 * he                                     # memory features
  f = {
      "enc_input_proj": 2 * b * s * e * 6 * he,  # both directions x 3 gates
      "enc_recurrent": 2 * b * s * he * 6 * he,
      "bridge": 2 * b * m * hd,
      "attn_keys": 2 * b * s * m * a,
      "attn_query": 2 * b * t * hd * a,
      "attn_energy_v": 2 * b * t * s * a,
      "attn_context": 2 * b * t * s * m,
      "dec_gru_context": 2 * b * t * m * 3 * hd,
      "dec_gru_embedding": 2 * b * t * e * 3 * hd,
      "dec_recurrent": 2 * b * t * hd * 3 * hd,
      "output_proj": 2 * b * t * (hd + m + e) * trg_vocab,
  }
  if not hoisted:
    f["attn_keys"] = 2 * b * t * s * (hd + m) * a  # Linear([s; h_j]) at every step
    f["attn_query"] = 0
  f = {k: float(v) for k, v in f.items()}
  fwd = sum(f.values())
  f["forward"] = fwd
  f["train"] = 3.0 * fwd
  f["forward_per_token"] = fwd / (b * t)
  f["train_per_token"] = 3.0 * fwd / (b * t)
  return f


def shapes_flops(shapes: Shapes, hoisted: bool = True) -> dict[str, float]:
  return model_flops(shapes.batch, shapes.src_len, shapes.trg_len, shapes.emb, shapes.hidden,
                     shapes.hidden, shapes.hidden, shapes.trg_vocab, hoisted=hoisted)


# ---- timing -----------------------------------------------------------------------------


def _reset_peak_rss() -> None:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
  except OSError:
    pass


def _rss_mb(field: str = "VmHWM") -> float:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  import resource  # fallback: the lifetime peak (kB on Linux)
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclasses.dataclass
class Case:
  """One (impl, what) to time; `fn()` runs one step to completion."""

  impl: str
  what: str
  fn: Callable[[], Any]
  tokens: int
  compile_s: float | None = None   # measured separately (AOT); else first - median
  first_s: float = 0.0
  times: list = dataclasses.field(default_factory=list)
  cpu_times: list = dataclasses.field(default_factory=list)
  peak_mb: float = 0.0
  rss_before_mb: float = 0.0
  extra: dict = dataclasses.field(default_factory=dict)

  def timed_call(self) -> float:
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    c0, t0 = time.process_time(), time.perf_counter()
    self.fn()
    dt = time.perf_counter() - t0
    self.cpu_times.append(time.process_time() - c0)
    self.peak_mb = max(self.peak_mb, _rss_mb("VmHWM"))
    self.rss_before_mb = max(self.rss_before_mb, before)
    return dt

  def record(self, shapes: Shapes) -> dict[str, Any]:
    median = statistics.median(self.times)
    compile_s = self.compile_s
    method = "first_call_minus_second_call"
    if compile_s is None:
      compile_s, method = max(self.first_s - median, 0.0), "first_call_minus_median"
    return dict(impl=self.impl, what=self.what, tokens_per_s=self.tokens / median,
                ms_per_step=1e3 * median, compile_s=compile_s, peak_rss_mb=self.peak_mb,
                rss_before_mb=self.rss_before_mb, first_call_s=self.first_s,
                compile_method=method, repeats=len(self.times),
                ms_min=1e3 * min(self.times), ms_max=1e3 * max(self.times),
                # CPU seconds this process used per wall second of the timed calls:
                # about os.cpu_count() when nothing else competes for the cores.
                cores_used=sum(self.cpu_times[-len(self.times):]) / max(sum(self.times), 1e-9),
                batch=shapes.batch, src_len=shapes.src_len, trg_len=shapes.trg_len,
                **self.extra)


def call_times(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of each of `repeats` calls of `fn` (at least one), after one untimed call."""
  fn()
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def measure(cases: list[Case], repeats: int, warmup: int) -> None:
  """Each case in turn, back to back: its first call, `warmup` untimed calls
  and `repeats` timed calls.

  Not interleaved call by call: a step right after the other library's step
  runs 10-15 % slower or faster than after its own (`bench.interference`; PERFORMANCE.md),
  so each implementation is timed in its own steady state, as a user runs it.
  """
  for c in cases:
    c.first_s = c.timed_call()
    for _ in range(warmup):
      c.fn()
    for _ in range(max(repeats, 1)):
      c.times.append(c.timed_call())


def matmul_case(impl: str, n: int = 2048, calls: int = 3, torch_device: str = "cpu") -> Case:
  """`calls` float32 n x n x n matmuls per `fn()` in jax (`impl` "jax", on its
  default device) or torch (`impl` "torch", on `torch_device`); `extra["flop"]`
  per `fn()`."""
  rng = np.random.default_rng(0)
  a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  if impl == "jax":
    import jax
    import jax.numpy as jnp
    mm = jax.jit(jnp.matmul)
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    one = lambda: mm(a, b).block_until_ready()
  else:
    import torch
    a, b = torch.from_numpy(a_np).to(torch_device), torch.from_numpy(b_np).to(torch_device)
    one = lambda: torch.mm(a, b)

  def fn():
    for _ in range(calls):
      one()
    if impl == "torch" and torch_device.startswith("cuda"):
      torch.cuda.synchronize()

  return Case(impl, "matmul", fn, 0, extra={"flop": 2.0 * n ** 3 * calls})


def matmul_gflops(case: Case) -> float:
  """The median rate of a measured `matmul_case`, GFLOP/s."""
  return case.extra["flop"] / statistics.median(case.times) / 1e9


# ---- data -------------------------------------------------------------------------------


def make_batch(shapes: Shapes, seed: int = 0) -> dict[str, np.ndarray]:
  """A random padded batch: src `[B, S]`, lengths `[B]`, trg `[B, T + 1]` (BOS first,
  EOS at the end of each row, pad after)."""
  rng = np.random.default_rng(seed)
  b, s, t = shapes.batch, shapes.src_len, shapes.trg_len
  src_lengths = rng.integers(max(1, s // 2), s + 1, b)
  src_lengths[0] = s
  src = rng.integers(4, shapes.src_vocab, (b, s))
  src[np.arange(s)[None, :] >= src_lengths[:, None]] = PAD
  trg_lengths = rng.integers(max(2, (t + 1) // 2), t + 2, b)  # BOS ... EOS, at most t + 1
  trg_lengths[0] = t + 1
  trg = rng.integers(4, shapes.trg_vocab, (b, t + 1))
  trg[:, 0] = BOS
  trg[np.arange(b), trg_lengths - 1] = EOS
  trg[np.arange(t + 1)[None, :] >= trg_lengths[:, None]] = PAD
  return dict(src=src.astype(np.int32), src_lengths=src_lengths.astype(np.int32),
              trg=trg.astype(np.int32))
