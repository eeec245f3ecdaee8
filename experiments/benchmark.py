"""Speed of flax_attn against two PyTorch peers of the same model, on this machine.

  python experiments/benchmark.py                    # table, tutorial shapes
  python experiments/benchmark.py --json             # one JSON line per measurement
  python experiments/benchmark.py --what train --repeats 3
  python experiments/benchmark.py --sweep            # batch x trg_len grid, train step
  python experiments/benchmark.py --profile          # where the flax train step spends time
  python experiments/benchmark.py --loop             # training loop vs bare step (dates, g2p)
  python experiments/benchmark.py --peers torch_tutorial,torch_hoisted   # choose the peers
  python experiments/benchmark.py --torch_device cuda --fp32_matmul ieee  # on a GPU

The pieces live in experiments/bench/: harness.py (shapes, FLOPs, timed
cases), flax_cases.py and torch_cases.py (what is timed), compare.py (one
run and its report), sweep.py, profile.py, interference.py and loop.py. The PyTorch models
are flax_attn/reference/torch_seq2seq.py (the tutorial's code) and
flax_attn/reference/torch_hoisted.py.

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
  * flax: the project's own `flax_attn.steps.train_step`, pmapped by
    `flax_attn.parallel.pmap` on one device with the state donated (clip 1.0,
    Adam 1e-3); compile time = first call minus a steady call;
    greedy: `flax_attn.greedy.greedy_decode`; beam (size 5):
    `flax_attn.beam.beam_search`;
  * PyTorch peers, `torch.optim.Adam` and `clip_grad_norm_`, greedy under
    no_grad, no beam search: `torch_tutorial` is the tutorial's loop
    (`flax_attn.reference.torch_seq2seq`); `torch_hoisted`
    (`flax_attn.reference.torch_hoisted`)
    shares its weights and is written the way joeynmt writes Bahdanau
    attention: keys projected once per sentence, embedding gates and output
    projection outside the loop under teacher forcing; `torch_hoisted_compiled`
    is that model under `torch.compile` where it works on this machine;
  * threads: both use every core of the machine (torch intra-op threads =
    `os.cpu_count()`; XLA's CPU client uses one Eigen thread per core by default);
    OMP_WAIT_POLICY defaults to PASSIVE (see below); 'cores' in the table is the
    CPU seconds per wall second the process got, < cpu_count when others compete;
  * timing: implementations one after another, each in a block of back-to-back
    calls (first call, `--warmup` untimed, `--repeats` timed; a step right after
    the other library's runs 10-15 % slower, `--interference`), medians of the
    timed steps; compile_s is the flax train step's
    first call minus its second, else the first call minus the steady median;
  * peak RSS: the process's high-water mark (VmHWM, reset before each call
    via /proc/self/clear_refs), the maximum over that measurement's calls; it
    includes the resident state of both models (`rss_before_mb` in the JSON).

FLOPs are counted analytically for the hoisted model (matmuls only; a
multiply-add is 2 FLOPs; training = 3 x forward) and compared with a 2048^3
float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# Before torch loads its OpenMP runtime: spinning OpenMP threads (the default) wait
# for a descheduled sibling on a shared machine, which made torch's 2-thread train
# step 13-37 s instead of 5-10 s here while another process used the cores (and
# tiny ops 200x slower). PASSIVE sleeps instead; export OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
for _p in (_REPO, _HERE):
  if _p not in sys.path:
    sys.path.insert(0, _p)

from bench import compare, torch_cases  # noqa: E402
from bench.harness import Shapes  # noqa: E402


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def _names(text: str) -> tuple[str, ...]:
  return tuple(x for x in text.split(",") if x)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  d = Shapes()
  p.add_argument("--json", action="store_true", help="one JSON line per measurement")
  for field in ("batch", "src_len", "trg_len", "src_vocab", "trg_vocab", "emb", "hidden"):
    p.add_argument(f"--{field}", type=int, default=getattr(d, field))
  p.add_argument("--dropout", type=float, default=d.dropout)
  p.add_argument("--dtype", default=d.dtype, choices=("float32", "bfloat16"),
                 help="flax_attn matmul dtype (state, softmax and loss stay float32)")
  p.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
  p.add_argument("--what", default="train,greedy,beam", help="subset of train,greedy,beam")
  p.add_argument("--peers", default=None,
                 help=f"PyTorch peers, a subset of {','.join(torch_cases.PEERS)} (default: all; "
                      "--sweep: the two eager ones)")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--torch_device", default="cpu",
                 help="where the PyTorch peers run (cpu, cuda, cuda:1, ...); flax_attn runs on "
                      "jax's default device")
  p.add_argument("--fp32_matmul", default="", choices=("", "ieee", "tf32"),
                 help="float32 matmuls on a GPU, the same for both libraries: ieee (true "
                      "float32) or tf32; default: each library's own default")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sweep", action="store_true", help="train step over batch x trg_len")
  p.add_argument("--sweep_batches", default="32,64,128,256,512")
  p.add_argument("--sweep_trg_lens", default="8,16,32,64")
  p.add_argument("--sweep_repeats", type=int, default=2)
  p.add_argument("--out_dir", default=os.path.join(_REPO, "experiments", "results"))
  p.add_argument("--profile", action="store_true", help="time parts of the flax train step")
  p.add_argument("--profile_unrolls", default="1,4", help="scan_unroll values for --profile")
  p.add_argument("--interference", default="",
                 help="a sequence of train steps to time, F flax_attn, T torch_hoisted, s a "
                      "2 s sleep (e.g. FFFTFFTTT): each library's step after its own and after "
                      "the other's")
  p.add_argument("--loop", action="store_true",
                 help="whole training loop (input pipeline included) vs the bare step")
  p.add_argument("--loop_configs", default="dates,g2p")
  p.add_argument("--loop_steps", default="300,60", help="steps per config for --loop")
  args = p.parse_args(argv)
  unknown = set(_names(args.peers or "")) - set(torch_cases.PEERS)
  if unknown:
    p.error(f"unknown --peers {sorted(unknown)}; choose from {','.join(torch_cases.PEERS)}")
  return args


def _loop(args, log) -> list:
  from bench import loop as loop_benchmark
  rows = []
  for name, steps in zip(args.loop_configs.split(","), _ints(args.loop_steps)):
    log(f"loop vs bare step: {name}, {steps} steps x {args.repeats} repeats")
    rows.append(loop_benchmark.measure(name, steps, args.repeats))
    if args.json:
      print(json.dumps(rows[-1]), flush=True)
  if not args.json:
    print(loop_benchmark.format_rows(rows))
  return rows


def main(argv=None) -> dict[str, Any] | list | None:
  args = parse_args(argv)
  shapes = Shapes(args.batch, args.src_len, args.trg_len, args.src_vocab, args.trg_vocab,
                  args.emb, args.hidden, args.dropout, args.dtype)
  log = lambda msg: print(f"[benchmark] {msg}", file=sys.stderr, flush=True)
  if args.profile:
    from bench import profile
    out = profile.run_profile(shapes, args.repeats, _ints(args.profile_unrolls), args.seed, log)
    if args.json:
      print(json.dumps({"profile_ms": out}))
    return out
  if args.interference:
    from bench import interference
    out = interference.run_sequence(shapes, args.interference, args.seed, log)
    for key, ms in out["summary"].items():
      print(f"{key}: {ms:.0f}")
    return out
  if args.loop:
    return _loop(args, log)
  if args.sweep:
    from bench import sweep
    peers = _names(args.peers) if args.peers else sweep.SWEEP_PEERS
    records = sweep.run_sweep(shapes, _ints(args.sweep_batches), _ints(args.sweep_trg_lens),
                              args.sweep_repeats, args.out_dir, peers, args.seed, log,
                              " ".join(["python experiments/benchmark.py",
                                        *(sys.argv[1:] if argv is None else argv)]))
    if args.json:
      for r in records:
        print(json.dumps(r))
    else:
      print(compare.format_table(records))
      print(f"wrote {os.path.join(args.out_dir, 'sweep.md')} and sweep.png")
    return records
  peers = _names(args.peers) if args.peers else torch_cases.PEERS
  result = compare.run(shapes, _names(args.what), peers, args.repeats, args.warmup,
                       args.matmul_n, seed=args.seed, log=log, torch_device=args.torch_device,
                       fp32_matmul=args.fp32_matmul)
  if args.json:
    compare.print_json(result)
  else:
    print(compare.format_table(result["records"]))
    print(compare.format_summary(result))
  return result


if __name__ == "__main__":
  main()
