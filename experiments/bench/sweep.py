"""The train step over a batch x target-length grid: a markdown table and a plot."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from bench import flax_cases, torch_cases
from bench.harness import Shapes, make_batch, measure

FLAX = flax_cases.FLAX


SWEEP_PEERS = ("torch_tutorial", "torch_hoisted")  # a compiled peer recompiles per shape


def run_sweep(base: Shapes, batches, trg_lens, repeats: int, out_dir: str, peers=SWEEP_PEERS,
              seed: int = 0, log: Callable[[str], None] | None = None,
              command: str = "python experiments/benchmark.py --sweep") -> list[dict[str, Any]]:
  """Train step of flax_attn and each of `peers` (names in `torch_cases.PEERS`)
  at every (batch, trg_len), one implementation after another; writes sweep.md and sweep.png
  after every cell, so a run that is cut off leaves the cells it finished (marked partial)."""
  log = log or (lambda msg: None)
  torch_cases.set_threads()
  peers, notes = torch_cases.usable_peers(peers, log)
  for note in notes:
    log(note)
  models = torch_cases.build_models(base, seed)
  records = []
  for b in batches:
    for t in trg_lens:
      shapes = dataclasses.replace(base, batch=b, trg_len=t)
      batch_np = make_batch(shapes, seed)
      cases = [flax_cases.train_case(models.config, models.params, batch_np, shapes, seed)]
      cases += [torch_cases.train_case(models, peer, batch_np, shapes) for peer in peers]
      measure(cases, repeats, warmup=0)
      for c in cases:
        records.append(c.record(shapes))
        r = records[-1]
        log(f"batch {b:4d} trg_len {t:3d} {r['impl']:<24} {r['tokens_per_s']:9.0f} tok/s "
            f"{r['ms_per_step']:9.1f} ms")
      write_sweep(records, out_dir, command, planned=len(batches) * len(trg_lens))
  return records


def write_sweep(records: list[dict[str, Any]], out_dir: str,
                command: str = "python experiments/benchmark.py --sweep",
                planned: int | None = None) -> tuple[str, str]:
  """sweep.md (tokens/s of each implementation and flax_attn's ratio to each
  other one) and sweep.png (tokens/s against batch, one line per impl and length).
  With `planned` (the grid's cell count) above the cells in `records`, the
  table says it is partial."""
  os.makedirs(out_dir, exist_ok=True)
  by = {(r["impl"], r["batch"], r["trg_len"]): r for r in records}
  keys = sorted({(r["batch"], r["trg_len"]) for r in records})
  peers = sorted({r["impl"] for r in records} - {FLAX})
  head = (["batch", "trg_len", f"{FLAX} tokens/s"] + [f"{p} tokens/s" for p in peers]
          + [f"flax / {p}" for p in peers] + [f"{FLAX} ms/step", f"{FLAX} compile_s"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  for b, t in keys:
    f = by.get((FLAX, b, t))
    row = [str(b), str(t), f"{f['tokens_per_s']:.0f}" if f else "-"]
    row += [f"{by[p, b, t]['tokens_per_s']:.0f}" if (p, b, t) in by else "-" for p in peers]
    row += [f"{f['tokens_per_s'] / by[p, b, t]['tokens_per_s']:.2f}" if f and (p, b, t) in by
            else "-" for p in peers]
    row += [f"{f['ms_per_step']:.1f}", f"{f['compile_s']:.1f}"] if f else ["-", "-"]
    lines.append("| " + " | ".join(row) + " |")
  md = os.path.join(out_dir, "sweep.md")
  with open(md, "w") as fh:
    fh.write("# Train step throughput (forward + backward + clip + Adam)\n\n"
             "Teacher forcing 1.0, dropout 0.5, src_len "
             f"{records[0]['src_len']}, median of {records[0]['repeats']} timed steps "
             "after the first, each implementation's calls back to back; "
             f"{os.cpu_count()} threads each, OMP_WAIT_POLICY="
             f"{os.environ.get('OMP_WAIT_POLICY')}, 1-min load average at the end "
             f"{os.getloadavg()[0]:.1f}. Command: `{command}`.\n\n"
             + (f"**Partial: {len(keys)} of {planned} cells** (the run was cut off or "
                "is still going).\n\n" if planned and len(keys) < planned else "")
             + "\n".join(lines) + "\n")
  png = os.path.join(out_dir, "sweep.png")
  _plot(by, keys, [FLAX] + peers).savefig(png, dpi=120)
  return md, png


def _plot(by, keys, impls):
  import matplotlib.ticker
  from matplotlib.figure import Figure
  fig = Figure(figsize=(7, 4.5), layout="tight")
  ax = fig.add_subplot()
  colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["-o", "--s", ":^", "-.v"]
  for i, t in enumerate(sorted({t for _, t in keys})):
    for impl, style in zip(impls, styles):
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
  ax.set_title(" vs ".join(f"{impl} ({style})" for impl, style in zip(impls, styles)), fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  return fig
