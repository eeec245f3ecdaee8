"""Speed of flax_attn against the PyTorch port of the tutorial model, on this machine.

  python experiments/benchmark.py                    # table, tutorial shapes
  python experiments/benchmark.py --json             # one JSON line per measurement
  python experiments/benchmark.py --what train --repeats 3
  python experiments/benchmark.py --sweep            # batch x trg_len grid, train step
  python experiments/benchmark.py --profile          # where the flax train step spends time
  python experiments/benchmark.py --loop             # training loop vs bare step (dates, g2p)

Setting (the same on both sides, printed with the results):
  * shapes of bentrevett/pytorch-seq2seq tutorial 4: batch 128, vocabularies
    7853 (src) / 5893 (trg), embeddings 256, GRUs 512, attention 512, source
    and target length 24, dropout 0.5 in train mode;
  * identical weights: the flax parameters are `params_from_torch` of the torch
    model's `state_dict`;
  * training step = forward, masked cross entropy over non-pad targets,
    backward, global-norm clip 1.0, Adam lr 1e-3; teacher forcing 1.0 on both
    sides (every step feeds the true previous token, so flax takes its hoisted
    fast path: embedding gates before and the output projection after the
    scan). Both decoders run `trg_len` steps (torch gets a `trg_len + 1` long
    target because its `outputs[0]` is a dummy), so one step predicts
    `batch * trg_len` tokens on both sides and tokens/s = batch*trg_len / time;
  * flax: the project's own `flax_attn.train.train_step`, pmapped by
    `flax_attn.parallel.pmap` on one device with the state donated (clip 1.0,
    Adam 1e-3); compile time = first call minus a steady call;
    greedy: `flax_attn.decode.greedy_decode`; beam (size 5):
    `flax_attn.beam.beam_search` when that module exists;
  * torch: the tutorial loop (`tests/torch_seq2seq.py`), `torch.optim.Adam`,
    `clip_grad_norm_`; greedy: `Seq2Seq.greedy` under no_grad; no beam search;
  * threads: both use every core of the machine (torch intra-op threads =
    `os.cpu_count()`; XLA's CPU client uses one Eigen thread per core by default);
    OMP_WAIT_POLICY defaults to PASSIVE (see below); 'cores' in the table is the
    CPU seconds per wall second the process got, < cpu_count when others compete;
  * timing: implementations interleaved (A, B, A, B, ...) after a warm-up,
    medians of `--repeats` timed steps; compile_s is the AOT lower+compile time
    for the flax train step, else the first call minus the steady median;
  * peak RSS: the process's high-water mark (VmHWM, reset before each call
    via /proc/self/clear_refs), the maximum over that measurement's calls; it
    includes the resident state of both models (`rss_before_mb` in the JSON).

FLOPs are counted analytically for the hoisted model (matmuls only; a
multiply-add is 2 FLOPs; training = 3 x forward) and compared with a 2048^3
float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

# Before torch loads its OpenMP runtime: spinning OpenMP threads (the default) wait
# for a descheduled sibling on a shared machine, which made torch's 2-thread train
# step 13-37 s instead of 5-10 s here while another process used the cores (and
# tiny ops 200x slower). PASSIVE sleeps instead; export OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_REPO, os.path.join(_REPO, "tests")):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from flax_attn import parallel  # noqa: E402
from flax_attn import train as train_lib  # noqa: E402
from flax_attn.config import Seq2SeqConfig  # noqa: E402
from flax_attn.loss import cross_entropy_sums  # noqa: E402
from flax_attn.optimizer import make_optimizer  # noqa: E402
from flax_attn.convert import params_from_torch  # noqa: E402
from flax_attn.decode import greedy_decode  # noqa: E402
from flax_attn.model import Seq2Seq  # noqa: E402

try:
  import torch  # noqa: E402
  import torch.nn.functional as F  # noqa: E402
  import torch_seq2seq  # noqa: E402  (tests/torch_seq2seq.py)
except ImportError:  # the flax side still runs
  torch = None

PAD, BOS, EOS = 1, 2, 3
FLAX, TORCH = "flax_attn", "torch"
IMPLS = (FLAX, TORCH)
WHATS = ("train", "greedy", "beam")
BEAM_SIZE = 5
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


# ----------------------------------------------------------------------------- FLOPs


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


# ----------------------------------------------------------------------------- measuring


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
    method = "aot_lower_compile"
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


def measure(cases: list[Case], repeats: int, warmup: int) -> None:
  """First call, `warmup` untimed rounds, `repeats` timed rounds; all interleaved."""
  for c in cases:
    c.first_s = c.timed_call()
  for _ in range(warmup):
    for c in cases:
      c.fn()
  for _ in range(max(repeats, 1)):
    for c in cases:
      c.times.append(c.timed_call())


def matmul_case(impl: str, n: int = 2048, calls: int = 3) -> Case:
  """`calls` float32 n x n x n matmuls per `fn()`; `extra["flop"]` per `fn()`."""
  rng = np.random.default_rng(0)
  a_np, b_np = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  if impl == FLAX:
    mm = jax.jit(jnp.matmul)
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    one = lambda: mm(a, b).block_until_ready()
  else:
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    one = lambda: torch.mm(a, b)

  def fn():
    for _ in range(calls):
      one()

  return Case(impl, "matmul", fn, 0, extra={"flop": 2.0 * n ** 3 * calls})


def matmul_gflops(case: Case) -> float:
  """The median rate of a measured `matmul_case`, GFLOP/s."""
  return case.extra["flop"] / statistics.median(case.times) / 1e9


# ----------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------- flax side


def flax_train_case(config: Seq2SeqConfig, params, batch_np, shapes: Shapes,
                    seed: int = 0) -> Case:
  """The project's own pmapped `flax_attn.train.train_step` (on one device):
  masked cross entropy, clip_by_global_norm(1.0), Adam 1e-3, state donated."""
  tx = make_optimizer("adam", 1e-3, clip_norm=1.0)
  params = jax.tree.map(jnp.array, params)
  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(seed),
                               lr_scale=jnp.ones((), jnp.float32))
  trg = batch_np["trg"]
  batch = dict(src=batch_np["src"], src_lengths=batch_np["src_lengths"], trg_in=trg[:, :-1],
               trg_out=trg[:, 1:], weights=(trg[:, 1:] != config.pad_id).astype(np.float32))
  batch = parallel.shard(batch, 1)
  step = parallel.pmap(functools.partial(train_lib.train_step, model_config=config, tx=tx,
                                         teacher_forcing=1.0))
  holder = [parallel.replicate(state, 1)]

  def fn():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready((holder[0], metrics))
    return metrics

  t0 = time.perf_counter()
  fn()
  compile_s = time.perf_counter() - t0  # first call: compilation plus one step
  t0 = time.perf_counter()
  fn()
  compile_s = max(compile_s - (time.perf_counter() - t0), 0.0)
  return Case(FLAX, "train", fn, shapes.tokens, compile_s=compile_s)


def flax_greedy_case(config, params, batch_np, shapes: Shapes) -> Case:
  params = jax.tree.map(jnp.asarray, params)
  src, lengths = jnp.asarray(batch_np["src"]), jnp.asarray(batch_np["src_lengths"])

  def fn():
    return jax.block_until_ready(greedy_decode(config, params, src, lengths, shapes.trg_len))

  return Case(FLAX, "greedy", fn, shapes.tokens)


def find_beam_search():
  """`(beam_search, None)` or `(None, why it is missing)`."""
  try:
    module = importlib.import_module("flax_attn.beam")
  except Exception as e:  # noqa: BLE001  (another worker is writing it)
    return None, f"flax_attn.beam not importable ({type(e).__name__}: {e})"
  fn = getattr(module, "beam_search", None)
  if fn is None:
    return None, "flax_attn.beam has no beam_search"
  return fn, None


def _beam_kwargs(fn, config, params, src, lengths, max_len: int):
  """Fills `beam_search`'s parameters by name; raises TypeError if one is unknown."""
  values = {
      "config": config, "params": params, "variables": {"params": params}, "src": src,
      "src_lengths": lengths, "lengths": lengths, "beam_size": BEAM_SIZE,
      "num_beams": BEAM_SIZE, "beam": BEAM_SIZE, "k": BEAM_SIZE, "max_len": max_len,
      "max_decode_len": max_len, "max_length": max_len, "max_steps": max_len,
  }
  kwargs = {}
  for name, p in inspect.signature(fn).parameters.items():
    if name in values:
      kwargs[name] = values[name]
    elif p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL,
                                                                 p.VAR_KEYWORD):
      raise TypeError(f"beam_search needs {name!r}, which the benchmark cannot fill")
  return kwargs


def flax_beam_case(config, params, batch_np, shapes: Shapes) -> tuple[Case | None, str | None]:
  fn, why = find_beam_search()
  if fn is None:
    return None, why
  # Untrained weights make EOS about as likely as any token, and beam search stops
  # once no live hypothesis can beat a finished one (after ~3 steps here). Banning
  # EOS (its output bias -1e9) makes every call decode exactly trg_len steps.
  params = jax.tree.map(jnp.asarray, params)
  params["decoder"]["out_bias"] = params["decoder"]["out_bias"].at[config.eos_id].set(-1e9)
  src, lengths = jnp.asarray(batch_np["src"]), jnp.asarray(batch_np["src_lengths"])
  try:
    kwargs = _beam_kwargs(fn, config, params, src, lengths, shapes.trg_len)
  except (TypeError, ValueError) as e:
    return None, str(e)
  case = Case(FLAX, "beam", lambda: None, shapes.tokens,
              extra={"beam_size": BEAM_SIZE, "max_len": shapes.trg_len, "eos_banned": True})

  def call():
    out = jax.block_until_ready(fn(**kwargs))
    lengths = getattr(out, "lengths", None)
    if lengths is not None:  # beam search may stop early; tokens/s counts max_len
      case.extra["mean_output_len"] = float(np.mean(np.asarray(lengths)))
    return out

  case.fn = call
  return case, None


# ----------------------------------------------------------------------------- torch side


def torch_batch(batch_np):
  """Time-major torch tensors: src `[S, B]`, lengths `[B]` (CPU int64), trg `[T+1, B]`."""
  return (torch.from_numpy(batch_np["src"].T.astype(np.int64)).contiguous(),
          torch.from_numpy(batch_np["src_lengths"].astype(np.int64)),
          torch.from_numpy(batch_np["trg"].T.astype(np.int64)).contiguous())


def torch_train_case(model, batch_np, shapes: Shapes) -> Case:
  src, src_len, trg = torch_batch(batch_np)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  vocab = model.decoder.output_dim

  def fn():
    model.train()
    opt.zero_grad(set_to_none=True)
    out = model(src, src_len, trg, teacher_forcing_ratio=1.0)  # [T+1, B, V], out[0] = 0
    loss = F.cross_entropy(out[1:].reshape(-1, vocab), trg[1:].reshape(-1), ignore_index=PAD)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()

  return Case(TORCH, "train", fn, shapes.tokens)


def torch_greedy_case(model, batch_np, shapes: Shapes) -> Case:
  src, src_len, _ = torch_batch(batch_np)

  def fn():
    model.eval()
    return model.greedy(src, src_len, BOS, shapes.trg_len)

  return Case(TORCH, "greedy", fn, shapes.tokens)


# ----------------------------------------------------------------------------- driver


def set_threads() -> int:
  """Both sides use every core: torch's intra-op pool; XLA CPU does so by default."""
  n = os.cpu_count() or 1
  if torch is not None:
    torch.set_num_threads(n)
  return n


def build_models(shapes: Shapes, seed: int = 0):
  """The torch model and the same weights as `(config, params)` for flax_attn."""
  if torch is None:
    raise ImportError("the benchmark needs torch for the reference model and its weights")
  tmodel = torch_seq2seq.build(src_vocab=shapes.src_vocab, trg_vocab=shapes.trg_vocab,
                               emb=shapes.emb, enc_hid=shapes.hidden, dec_hid=shapes.hidden,
                               dropout=shapes.dropout, pad_id=PAD, seed=seed)
  config, params = params_from_torch(tmodel.state_dict(), pad_id=PAD, bos_id=BOS, eos_id=EOS,
                                     dropout=shapes.dropout, dtype=shapes.dtype)
  return tmodel, config, params


def run(shapes: Shapes = Shapes(), what=WHATS, impls=IMPLS, repeats: int = 5, warmup: int = 1,
        matmul_n: int = 2048, matmul_calls: int = 3, seed: int = 0,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Times `what` x `impls` at `shapes`; returns `{"records": [...], "summary": {...}}`."""
  log = log or (lambda msg: None)
  threads = set_threads()
  load_start = os.getloadavg()
  what = tuple(what)
  impls = tuple(impls)
  tmodel, config, params = build_models(shapes, seed)
  batch_np = make_batch(shapes, seed)
  notes, records = [], []
  # The matmul rate is timed interleaved with the train steps (or on its own when
  # there are none), so it sees the same load from other processes.
  matmul = [matmul_case(i, matmul_n, matmul_calls) for i in IMPLS
            if i == FLAX or torch is not None]
  for w in what:
    cases = []
    if w == "train":
      if FLAX in impls:
        log("compiling the flax train step")
        cases.append(flax_train_case(config, params, batch_np, shapes, seed))
      if TORCH in impls:
        cases.append(torch_train_case(tmodel, batch_np, shapes))
    elif w == "greedy":
      if FLAX in impls:
        cases.append(flax_greedy_case(config, params, batch_np, shapes))
      if TORCH in impls:
        cases.append(torch_greedy_case(tmodel, batch_np, shapes))
    elif w == "beam":
      if FLAX in impls:
        case, why = flax_beam_case(config, params, batch_np, shapes)
        if case is None:
          notes.append(f"beam skipped: {why}")
        else:
          cases.append(case)
      if TORCH in impls:
        notes.append("beam: torch n/a (the tutorial port has no beam search)")
    else:
      raise ValueError(f"unknown --what {w!r}; choose from {WHATS}")
    if not cases:
      continue
    if w == "train":
      cases.extend(matmul)
    log(f"timing {w}: {', '.join(c.impl for c in cases)} interleaved, "
        f"1 first + {warmup} warm-up + {repeats} timed each")
    try:
      measure(cases, repeats, warmup)
    except Exception as e:  # noqa: BLE001  (a half-written beam_search must not kill the run)
      if w != "beam":
        raise
      notes.append(f"beam skipped: beam_search raised {type(e).__name__}: {e}")
      continue
    records.extend(c.record(shapes) for c in cases if c.what != "matmul")
  if not matmul[0].times:
    measure(matmul, repeats, warmup)

  flops = shapes_flops(shapes)
  flops_torch = shapes_flops(shapes, hoisted=False)
  rates = {c.impl: matmul_gflops(c) for c in matmul}
  for r in records:
    if r["what"] == "train":
      r["gflop_per_s"] = flops["train"] / (r["ms_per_step"] / 1e3) / 1e9
      r["pct_of_matmul"] = 100.0 * r["gflop_per_s"] / rates[r["impl"]]
      if r["impl"] == TORCH:  # what the unhoisted tutorial code actually executes
        r["executed_gflop_per_s"] = flops_torch["train"] / (r["ms_per_step"] / 1e3) / 1e9
  by = {(r["impl"], r["what"]): r for r in records}
  ratios = {w: by[FLAX, w]["tokens_per_s"] / by[TORCH, w]["tokens_per_s"]
            for w in ("train", "greedy") if (FLAX, w) in by and (TORCH, w) in by}
  summary = dict(
      shapes=dataclasses.asdict(shapes), threads=threads, teacher_forcing=1.0, dtype=shapes.dtype,
      optimizer="adam(1e-3) after clip_by_global_norm(1.0)", dropout_train_mode=shapes.dropout,
      forward_mflop_per_token=flops["forward_per_token"] / 1e6,
      train_mflop_per_token=flops["train_per_token"] / 1e6,
      train_gflop_per_step=flops["train"] / 1e9,
      torch_executed_forward_mflop_per_token=flops_torch["forward_per_token"] / 1e6,
      flop_components_mflop_per_token={
          k: v / shapes.tokens / 1e6 for k, v in flops.items()
          if k not in ("forward", "train", "forward_per_token", "train_per_token")},
      matmul_n=matmul_n, matmul_calls_per_sample=matmul_calls,
      matmul_gflop_per_s_jax=rates[FLAX],
      matmul_gflop_per_s_torch=rates.get(TORCH), flax_over_torch_tokens_per_s=ratios,
      notes=notes, loadavg_1min_start_end=(load_start[0], os.getloadavg()[0]),
      omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), jax_version=jax.__version__,
      torch_version=None if torch is None else torch.__version__)
  return dict(records=records, summary=summary)


# ----------------------------------------------------------------------------- reporting


def format_table(records: list[dict[str, Any]]) -> str:
  nan = float("nan")
  head = (f"{'impl':<10} {'what':<7} {'batch':>5} {'trg':>4} {'tokens/s':>10} {'ms/step':>9} "
          f"{'min_ms':>9} {'compile_s':>9} {'peak_rss_MB':>11} {'cores':>5}")
  lines = [head, "-" * len(head)]
  for r in records:
    lines.append(f"{r['impl']:<10} {r['what']:<7} {r['batch']:>5} {r['trg_len']:>4} "
                 f"{r['tokens_per_s']:>10.0f} {r['ms_per_step']:>9.1f} "
                 f"{r.get('ms_min', nan):>9.1f} {r['compile_s']:>9.2f} "
                 f"{r['peak_rss_mb']:>11.0f} {r.get('cores_used', nan):>5.2f}")
  return "\n".join(lines)


def format_summary(result: dict[str, Any]) -> str:
  s, lines = result["summary"], []
  for w, ratio in s["flax_over_torch_tokens_per_s"].items():
    lines.append(f"flax/torch tokens/s, {w}: {ratio:.2f}x")
  lines.append(f"FLOPs (hoisted model, matmuls): forward {s['forward_mflop_per_token']:.4g} "
               f"MFLOP/token, train (3x) {s['train_mflop_per_token']:.4g} MFLOP/token, "
               f"{s['train_gflop_per_step']:.4g} GFLOP/step; the tutorial's unhoisted torch "
               f"forward executes {s['torch_executed_forward_mflop_per_token']:.4g} MFLOP/token")
  torch_rate = s["matmul_gflop_per_s_torch"]
  lines.append(f"float32 {s['matmul_n']}^3 matmul (interleaved with the train steps): "
               f"jax {s['matmul_gflop_per_s_jax']:.1f} GFLOP/s"
               + (f", torch {torch_rate:.1f} GFLOP/s" if torch_rate else ""))
  for r in result["records"]:
    if r["what"] == "train":
      line = (f"train {r['impl']}: {r['gflop_per_s']:.1f} GFLOP/s of model FLOPs = "
              f"{r['pct_of_matmul']:.0f}% of its matmul rate")
      if "executed_gflop_per_s" in r:
        line += f" (executes {r['executed_gflop_per_s']:.1f} GFLOP/s)"
      if "xla_flops_per_token" in r:
        line += (f" [XLA cost analysis, which counts loop bodies once: "
                 f"{r['xla_flops_per_token'] / 1e6:.4g} MFLOP/token]")
      lines.append(line)
  lines.append(f"setting: flax_attn matmuls in {s.get('dtype', 'float32')} (torch float32), "
               f"teacher forcing {s['teacher_forcing']}, "
               f"dropout {s['dropout_train_mode']} (train mode), {s['optimizer']}, "
               f"{s['threads']} threads each (OMP_WAIT_POLICY={s['omp_wait_policy']}), "
               f"jax {s['jax_version']}, torch {s['torch_version']}; 1-min load average "
               f"{s['loadavg_1min_start_end'][0]:.1f} -> {s['loadavg_1min_start_end'][1]:.1f} "
               f"on {os.cpu_count()} cores ('cores' = CPU s per wall s of the timed calls)")
  lines.extend(s["notes"])
  return "\n".join(lines)


def print_json(result: dict[str, Any]) -> None:
  for r in result["records"]:
    print(json.dumps(r))
  print(json.dumps({"summary": result["summary"]}))


# ----------------------------------------------------------------------------- sweep


def run_sweep(base: Shapes, batches, trg_lens, repeats: int, out_dir: str, impls=IMPLS,
              seed: int = 0, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
  """Train step of every impl over batch x trg_len; writes sweep.md and sweep.png."""
  log = log or (lambda msg: None)
  set_threads()
  records = []
  tmodel, config, params = build_models(base, seed)
  for b in batches:
    for t in trg_lens:
      shapes = dataclasses.replace(base, batch=b, trg_len=t)
      batch_np = make_batch(shapes, seed)
      cases = []
      if FLAX in impls:
        cases.append(flax_train_case(config, params, batch_np, shapes, seed))
      if TORCH in impls:
        cases.append(torch_train_case(tmodel, batch_np, shapes))
      measure(cases, repeats, warmup=0)
      for c in cases:
        records.append(c.record(shapes))
        r = records[-1]
        log(f"batch {b:4d} trg_len {t:3d} {r['impl']:<10} {r['tokens_per_s']:9.0f} tok/s "
            f"{r['ms_per_step']:9.1f} ms")
      del cases
  write_sweep(records, out_dir)
  return records


def write_sweep(records: list[dict[str, Any]], out_dir: str) -> tuple[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  by = {(r["impl"], r["batch"], r["trg_len"]): r for r in records}
  keys = sorted({(r["batch"], r["trg_len"]) for r in records})
  lines = ["| batch | trg_len | flax_attn tokens/s | torch tokens/s | flax/torch | "
           "flax ms/step | torch ms/step | flax compile_s |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  fmt = lambda r, k, spec: format(r[k], spec) if r else "-"
  for b, t in keys:
    f, p = by.get((FLAX, b, t)), by.get((TORCH, b, t))
    ratio = f"{f['tokens_per_s'] / p['tokens_per_s']:.2f}" if f and p else "-"
    lines.append(f"| {b} | {t} | {fmt(f, 'tokens_per_s', '.0f')} | {fmt(p, 'tokens_per_s', '.0f')}"
                 f" | {ratio} | {fmt(f, 'ms_per_step', '.1f')} | {fmt(p, 'ms_per_step', '.1f')} | "
                 f"{fmt(f, 'compile_s', '.1f')} |")
  md = os.path.join(out_dir, "sweep.md")
  with open(md, "w") as fh:
    fh.write("# Train step throughput (forward + backward + clip + Adam)\n\n"
             "Teacher forcing 1.0, dropout 0.5, src_len "
             f"{records[0]['src_len']}, median of {records[0]['repeats']} timed steps "
             "after one warm-up step, implementations interleaved; "
             f"{os.cpu_count()} threads each, OMP_WAIT_POLICY="
             f"{os.environ.get('OMP_WAIT_POLICY')}, 1-min load average at the end "
             f"{os.getloadavg()[0]:.1f}.\n\n" + "\n".join(lines) + "\n")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.ticker
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  trg_lens = sorted({t for _, t in keys})
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, t in enumerate(trg_lens):
    for impl, style in ((FLAX, "-o"), (TORCH, "--s")):
      pts = [(b, by[impl, b, tt]["tokens_per_s"]) for b, tt in keys
             if tt == t and (impl, b, tt) in by]
      if pts:
        ax.plot(*zip(*pts), style, color=colors[i % len(colors)], label=f"{impl} T={t}")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted({b for b, _ in keys}))
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_yscale("log")
  ax.set_xlabel("batch")
  ax.set_ylabel("target tokens / s (train step)")
  ax.set_title("flax_attn (solid) vs torch (dashed)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  png = os.path.join(out_dir, "sweep.png")
  fig.savefig(png, dpi=120)
  plt.close(fig)
  return md, png


# ----------------------------------------------------------------------------- profile


def _times(fn, repeats: int) -> list[float]:
  fn()
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


# Profile helpers: the same computation as `flax_attn.train.train_step` without
# pmap, so each part can be jitted and timed on its own.

def masked_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad_id: int):
  """Mean cross entropy over non-pad targets."""
  _, nll_sum, weight_sum = cross_entropy_sums(logits_BxTxV, targets_BxT,
                                              (targets_BxT != pad_id).astype(jnp.float32))
  return nll_sum / jnp.maximum(weight_sum, 1.0)


def loss_fn(config: Seq2SeqConfig, params, batch, dropout_rng):
  logits = Seq2Seq(config).apply({"params": params}, batch["src"], batch["src_lengths"],
                                 batch["trg_in"], train=True, teacher_forcing=1.0,
                                 rngs={"dropout": dropout_rng})
  return masked_cross_entropy(logits, batch["targets"], config.pad_id)


def train_step(config: Seq2SeqConfig, tx, state, batch):
  params, opt_state, rng = state
  rng, dropout_rng = jax.random.split(rng)
  loss, grads = jax.value_and_grad(functools.partial(loss_fn, config))(params, batch,
                                                                      dropout_rng)
  updates, opt_state = tx.update(grads, opt_state, params)
  return (optax.apply_updates(params, updates), opt_state, rng), loss


def flax_batch(batch_np: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  return dict(src=jnp.asarray(batch_np["src"]), src_lengths=jnp.asarray(batch_np["src_lengths"]),
              trg_in=jnp.asarray(batch_np["trg"][:, :-1]),
              targets=jnp.asarray(batch_np["trg"][:, 1:]))


def run_profile(shapes: Shapes, repeats: int = 5, unrolls=(1,), seed: int = 0,
                log: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
  """Times parts of the flax train step, each jitted on its own.

  Returns `{part: {"median_ms", "min_ms"}}`; the min is the better estimate of
  the intrinsic cost on a shared machine. "derived" rows are differences.
  """
  log = log or (lambda msg: None)
  set_threads()
  _, config, params = build_models(shapes, seed)
  params = jax.tree.map(jnp.asarray, params)
  batch = flax_batch(make_batch(shapes, seed))
  rng = jax.random.key(seed)
  model = Seq2Seq(config)
  out: dict[str, dict[str, float]] = {}

  def show(name):
    log(f"{name:<50} median {out[name]['median_ms']:8.1f} ms   min {out[name]['min_ms']:8.1f} ms")

  def timeit(name, f, *args):
    compiled = jax.jit(f).lower(*args).compile()
    times = _times(lambda: jax.block_until_ready(compiled(*args)), repeats)
    out[name] = dict(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
    show(name)

  def encode(p):
    s0, cache = model.apply({"params": p}, batch["src"], batch["src_lengths"], train=True,
                            method=Seq2Seq.encode, rngs={"dropout": rng})
    return jnp.sum(s0) + jnp.sum(cache.memory) + jnp.sum(cache.keys)

  s0, cache = model.apply({"params": params}, batch["src"], batch["src_lengths"],
                          method=Seq2Seq.encode)

  def decode(p, s0, cache):  # decoder (scan + hoisted projections) + loss
    logits, _ = model.apply({"params": p}, s0, cache, batch["trg_in"], train=True,
                            method=lambda m, *a, **k: m.decoder(*a, **k),
                            rngs={"dropout": rng})
    return masked_cross_entropy(logits, batch["targets"], config.pad_id)

  def project(w, bias, feats):  # the hoisted output projection + loss
    logits = jnp.dot(feats, w) + bias
    return masked_cross_entropy(logits, batch["targets"], config.pad_id)

  dec = params["decoder"]
  feats = jnp.ones((shapes.batch, shapes.trg_len, dec["out_kernel"].shape[0]), jnp.float32)
  loss = functools.partial(loss_fn, config)
  timeit("encoder fwd (+ key projection)", encode, params)
  timeit("encoder fwd+bwd", jax.grad(encode), params)
  timeit("decoder + loss fwd", decode, params, s0, cache)
  timeit("decoder + loss fwd+bwd", jax.grad(decode, argnums=(0, 1, 2)), params, s0, cache)
  timeit("output projection + loss fwd", project, dec["out_kernel"], dec["out_bias"], feats)
  timeit("output projection + loss fwd+bwd",
         jax.grad(project, argnums=(0, 1, 2)), dec["out_kernel"], dec["out_bias"], feats)
  timeit("model + loss fwd", loss, params, batch, rng)
  timeit("model + loss fwd+bwd", jax.grad(loss), params, batch, rng)
  tx = make_optimizer("adam", 1e-3, clip_norm=1.0)
  for unroll in unrolls:
    cfg = dataclasses.replace(config, scan_unroll=unroll)
    state = (params, tx.init(params), rng)
    timeit(f"full train step (scan_unroll={unroll})",
           functools.partial(train_step, cfg, tx), state, batch)

  def derive(name, plus, minus):
    out[name] = {k: sum(out[p][k] for p in plus) - sum(out[m][k] for m in minus)
                 for k in ("median_ms", "min_ms")}
    show(name)

  derive("derived: decoder scan (+ emb gates) fwd", ["decoder + loss fwd"],
         ["output projection + loss fwd"])
  derive("derived: decoder scan (+ emb gates) fwd+bwd", ["decoder + loss fwd+bwd"],
         ["output projection + loss fwd+bwd"])
  first = f"full train step (scan_unroll={unrolls[0]})"
  if first in out:
    derive("derived: optimizer (clip + adam)", [first], ["model + loss fwd+bwd"])
  return out


# ----------------------------------------------------------------------------- main


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  d = Shapes()
  p.add_argument("--json", action="store_true", help="one JSON line per measurement")
  p.add_argument("--batch", type=int, default=d.batch)
  p.add_argument("--src_len", type=int, default=d.src_len)
  p.add_argument("--trg_len", type=int, default=d.trg_len)
  p.add_argument("--src_vocab", type=int, default=d.src_vocab)
  p.add_argument("--trg_vocab", type=int, default=d.trg_vocab)
  p.add_argument("--emb", type=int, default=d.emb)
  p.add_argument("--hidden", type=int, default=d.hidden)
  p.add_argument("--dropout", type=float, default=d.dropout)
  p.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"),
                 help="flax_attn matmul dtype (state, softmax and loss stay float32)")
  p.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
  p.add_argument("--what", default="train,greedy,beam", help="subset of train,greedy,beam")
  p.add_argument("--impls", default=",".join(IMPLS), help="subset of flax_attn,torch")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sweep", action="store_true", help="train step over batch x trg_len")
  p.add_argument("--sweep_batches", default="32,64,128,256,512")
  p.add_argument("--sweep_trg_lens", default="8,16,32,64")
  p.add_argument("--sweep_repeats", type=int, default=2)
  p.add_argument("--out_dir", default=os.path.join(_REPO, "experiments", "results"))
  p.add_argument("--profile", action="store_true", help="time parts of the flax train step")
  p.add_argument("--loop", action="store_true",
                 help="whole training loop (input pipeline included) vs the bare step")
  p.add_argument("--loop_configs", default="dates,g2p")
  p.add_argument("--loop_steps", default="300,60", help="steps per config for --loop")
  p.add_argument("--profile_unrolls", default="1,4", help="scan_unroll values for --profile")
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any] | list | None:
  args = parse_args(argv)
  shapes = Shapes(args.batch, args.src_len, args.trg_len, args.src_vocab, args.trg_vocab,
                  args.emb, args.hidden, args.dropout, args.dtype)
  impls = tuple(x for x in args.impls.split(",") if x)
  log = lambda msg: print(f"[benchmark] {msg}", file=sys.stderr, flush=True)
  if args.profile:
    out = run_profile(shapes, args.repeats, _ints(args.profile_unrolls), args.seed, log)
    if args.json:
      print(json.dumps({"profile_ms": out}))
    return out
  if args.loop:
    import loop_benchmark
    rows = []
    for name, steps in zip(args.loop_configs.split(","), _ints(args.loop_steps)):
      log(f"loop vs bare step: {name}, {steps} steps x {args.repeats} repeats")
      rows.append(loop_benchmark.measure(name, steps, args.repeats))
      if args.json:
        print(json.dumps(rows[-1]), flush=True)
    if not args.json:
      print(loop_benchmark.format_rows(rows))
    return rows
  if args.sweep:
    records = run_sweep(shapes, _ints(args.sweep_batches), _ints(args.sweep_trg_lens),
                        args.sweep_repeats, args.out_dir, impls, args.seed, log)
    if args.json:
      for r in records:
        print(json.dumps(r))
    else:
      print(format_table(records))
      print(f"wrote {os.path.join(args.out_dir, 'sweep.md')} and sweep.png")
    return records
  result = run(shapes, tuple(x for x in args.what.split(",") if x), impls, args.repeats,
               args.warmup, args.matmul_n, seed=args.seed, log=log)
  if args.json:
    print_json(result)
  else:
    print(format_table(result["records"]))
    print(format_summary(result))
  return result


if __name__ == "__main__":
  main()
