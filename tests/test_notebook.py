"""experiments/colab.ipynb: committed without outputs, and runs top to bottom on CPU.

The run executes every cell in a fresh python3 kernel (nbclient, ipykernel)
with the parameters cell overridden (tiny preset, a temporary workdir, no
install), as a Colab user would with *Run all*; any cell error fails it.
Needs nbformat, nbclient and ipykernel (skipped without them).
"""

import json

import pytest
from _runs import ENV, REPO, TIMEOUT

pytestmark = pytest.mark.slow  # runs the Colab notebook

NOTEBOOK = REPO / "experiments" / "colab.ipynb"


def _cell(nb, cell_id):
  (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
  return cell


def _text(cell) -> str:
  """Everything a code cell printed (streams and plain-text results)."""
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out["text"])
    elif "data" in out:
      parts.append(out["data"].get("text/plain", ""))
  return "".join(parts)


def _images(cell) -> int:
  return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_committed_notebook_has_no_outputs():
  nb = json.loads(NOTEBOOK.read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code
  for c in code:
    assert c.get("outputs") == [], f"cell {c.get('id')} has outputs"
    assert c.get("execution_count") is None, f"cell {c.get('id')} has an execution count"
    assert "execution" not in c.get("metadata", {}), f"cell {c.get('id')} has execution timings"
  tags = code[0].get("metadata", {}).get("tags", [])
  assert "parameters" in tags, "the first code cell must be tagged `parameters`"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path_factory.mktemp("notebook") / "dates"
  params = _cell(nb, "parameters")
  params.source += (f'\nPRESET = "tiny"\nWORKDIR = {str(workdir)!r}\nINSTALL = False\n'
                    'RUN_BIG = False\n')  # papermill-style overrides after the defaults
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT,
                                   resources={"metadata": {"path": str(REPO / "experiments")}})
  # A fresh compilation cache: the notebook's subprocesses reuse the kernel's compilations,
  # as they would on Colab, but nothing from an earlier test session.
  env = {**ENV, "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache"))}
  client.execute(env=env)  # raises CellExecutionError on the first failing cell
  return nb, workdir


def test_notebook_runs_top_to_bottom_on_cpu(executed):
  nb, workdir = executed
  assert "CpuDevice" in _text(_cell(nb, "devices"))
  assert f"WORKDIR = {workdir}" in _text(_cell(nb, "workdir"))
  trained = _text(_cell(nb, "train"))
  assert '"step": 20' in trained and '"exact_match"' in trained
  assert _images(_cell(nb, "figures")) == 2  # curves.png and attention.png
  translated = _cell(nb, "translate")
  lines = [l for l in _text(translated).splitlines() if "->" in l]
  assert len(lines) == 4 and lines[0].startswith("'tuesday, 3 march 1998'")
  assert _images(translated) == 1  # the heatmap of a typed input
  evaluation = json.loads(_text(_cell(nb, "evaluate")))
  assert evaluation["split"] == "test" and evaluation["step"] == 20 and "exact_match" in evaluation
  interrupted = _text(_cell(nb, "interrupt"))
  assert "exit code 75" in interrupted and "stopped by a signal at step" in interrupted
  resumed = _text(_cell(nb, "resume"))
  assert "exit code 0" in resumed and "resumed from step" in resumed
  assert _images(_cell(nb, "resume")) == 1  # the curves, now to step 60
  assert (workdir / "checkpoints" / "60").exists()  # 3 x the tiny preset's 20 steps
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(l)["split"] == "train"]
  assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 60
