"""flax_attn.plot: figures without pyplot state, written to any path."""

import subprocess
import sys

import numpy as np
import pytest

from flax_attn import plot


def test_import_keeps_the_users_matplotlib_backend():
  """A notebook's inline backend must survive `import flax_attn.plot`."""
  code = ("import matplotlib; matplotlib.use('svg'); import flax_attn.plot, flax_attn.train; "
          "print(matplotlib.get_backend())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "svg"


def test_curves_and_heatmap_write_pngs(tmp_path):
  rows = [{"step": s, "split": "train", "loss": 3.0 / s} for s in (1, 2, 3)]
  rows += [{"step": 3, "split": "val", "loss": 1.2, "exact_match": 50.0},
           {"step": 3, "split": "test", "loss": 1.3, "final": True}]
  plot.training_curves(rows, tmp_path / "curves.png")
  plot.attention_heatmap(["a", "b", "<eos>"], ["x", "<eos>"], np.full((2, 3), 1 / 3),
                         tmp_path / "attention.png")
  for name in ("curves.png", "attention.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_checks_the_shape():
  with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
    plot.attention_heatmap(["a", "b", "c"], ["x", "y"], np.zeros((3, 2)))
