"""Serving exports (`flax_attn.serving`): the decoders as serialized StableHLO,
equal to `Translator`'s outputs, run by a loader that imports no model code."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from _runs import ENV, REPO, TIMEOUT
from flax_attn.serving import ServedTranslator, ServingError, default_widths, length_limit
from flax_attn.tasks import dates
from flax_attn.translator import Translator

BEAM = 3


@pytest.fixture(scope="module")
def translator(dates_run):
  return Translator.load(dates_run)


@pytest.fixture(scope="module")
def served_dir(translator, tmp_path_factory):
  out = tmp_path_factory.mktemp("serving") / "serve"
  translator.export_serving(out, beam_size=BEAM)
  return out


@pytest.fixture(scope="module")
def sentences():
  val = dates.load_splits(num_train=10, num_val=40, num_test=10)["val"]
  # Blank lines give ""; the last is longer than max_src_len and is truncated.
  return list(val.src) + ["", "   ", " ".join(["7 july 1999"] * 30)]


def test_default_widths_cover_max_src_len():
  assert default_widths(40) == (8, 16, 32, 64)
  assert default_widths(8) == (8,) and default_widths(9) == (8, 16)
  assert length_limit(10, 1.5, 10) == 25 and length_limit(0, 0.0, 0) == 1


@pytest.mark.parametrize("beam", [False, True])
def test_served_outputs_equal_the_translators(translator, served_dir, sentences, beam, caplog):
  served = ServedTranslator.load(served_dir)
  assert served.beam_size == BEAM and served.widths == (8, 16, 32, 64)
  want = translator.translate(sentences, beam_size=BEAM if beam else 1)
  got = served.translate(sentences, beam=beam)
  assert got == want
  assert got[-3:-1] == ["", ""] and served.truncated == 1
  assert "1 input(s) longer than" in caplog.text
  # Batches of 4 rows (several widths, padded rows) give the same outputs.
  assert served.translate(sentences, beam=beam, batch_size=4) == want


def test_default_decoding_is_the_beam_the_export_holds(served_dir, sentences):
  served = ServedTranslator.load(served_dir)
  assert served.translate(sentences[:6]) == served.translate(sentences[:6], beam=True)


def test_the_loader_imports_no_model_code(served_dir, sentences, translator):
  """A fresh interpreter loads and translates with jax, numpy and the
  tokenizers only: no Flax, Orbax or flax_attn model/decoder module."""
  code = (
      "import json, sys\n"
      "from flax_attn.serving import ServedTranslator\n"
      f"s = ServedTranslator.load({str(served_dir)!r})\n"
      f"out = s.translate({sentences[:8]!r}, beam=False)\n"
      "mods = [m for m in ('flax', 'orbax', 'flax_attn.model', 'flax_attn.greedy',\n"
      "        'flax_attn.beam', 'flax_attn.decoder', 'flax_attn.encoder', 'grain')\n"
      "        if m in sys.modules]\n"
      "print(json.dumps({'out': out, 'mods': mods}))\n")
  p = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                     timeout=TIMEOUT, cwd=REPO)
  assert p.returncode == 0, p.stderr[-3000:]
  result = json.loads(p.stdout.strip().splitlines()[-1])
  assert result["mods"] == []
  assert result["out"] == translator.translate(sentences[:8])


def test_a_changed_module_file_is_refused(served_dir, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(served_dir, copy)
  f = copy / "greedy_s8.jaxexport"
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 1
  f.write_bytes(bytes(data))
  with pytest.raises(ServingError, match="greedy_s8.jaxexport does not match its checksum"):
    ServedTranslator.load(copy)
  (copy / "MANIFEST.json").unlink()
  with pytest.raises(ServingError, match="MANIFEST.json cannot be read"):
    ServedTranslator.load(copy)


def test_bfloat16_serving_equals_the_bfloat16_translator(dates_run, sentences, tmp_path):
  bf16 = Translator.load(dates_run, dtype="bfloat16")
  bf16.export_serving(tmp_path / "bf16", src_widths=(8, 16, 32, 64), beam_size=1)
  served = ServedTranslator.load(tmp_path / "bf16")
  assert json.loads((tmp_path / "bf16" / "serving.json").read_text())["params"][
      "decoder/out_kernel"] == "bfloat16"
  assert str(served.params["decoder"]["out_kernel"].dtype) == "bfloat16"
  assert served.translate(sentences) == bf16.translate(sentences)


def test_errors(translator, served_dir, tmp_path, monkeypatch):
  with pytest.raises(ServingError, match="exists already"):
    translator.export_serving(served_dir)
  with pytest.raises(ServingError, match="increasing positive integers"):
    translator.export_serving(tmp_path / "a", src_widths=(16, 8))
  greedy_only = tmp_path / "greedy"
  translator.export_serving(greedy_only, src_widths=(8,), beam_size=1)
  served = ServedTranslator.load(greedy_only)
  assert served.beam_size == 1 and not list(greedy_only.glob("beam*"))
  # Sentences longer than the widest module are truncated to it, as Translator
  # truncates to max_src_len.
  assert served.max_src_len == 8
  assert len(served.translate(["12 december 2012, a wednesday"])) == 1 and served.truncated == 1
  with pytest.raises(ServingError, match="greedy modules only"):
    served.translate(["1 may 2000"], beam=True)
  with pytest.raises(ServingError, match="input 1 has 9 ids; this export takes 1 to 8"):
    served.translate_ids([np.array([5, 3], np.int32), np.arange(4, 13, dtype=np.int32)])
  with pytest.raises(TypeError, match="not a single string"):
    served.translate("1 may 2000")
  # jax calls an NVIDIA GPU's platform "cuda" when exporting ("gpu" is its backend).
  monkeypatch.setattr(jax.export, "default_export_platform", lambda: "cuda")
  ServedTranslator.load(greedy_only)
  monkeypatch.setattr(jax.export, "default_export_platform", lambda: "rocm")
  with pytest.raises(ServingError, match="not for this machine's 'rocm'"):
    ServedTranslator.load(greedy_only)
  monkeypatch.undo()
  tpu_only = tmp_path / "tpu"
  translator.export_serving(tpu_only, src_widths=(8,), beam_size=1, platforms=("tpu",))
  with pytest.raises(ServingError, match="lowered for \\['tpu'\\], not for this machine's 'cpu'"):
    ServedTranslator.load(tpu_only)


def _export_cli(*args):
  p = subprocess.run([sys.executable, str(REPO / "experiments/export.py"), *map(str, args)],
                     env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
  return p.returncode, p.stdout, p.stderr


def test_export_cli_serving(dates_run, translator, sentences, tmp_path):
  rc, out, err = _export_cli("--workdir", dates_run, "--out", tmp_path / "s", "--serving")
  assert rc == 0, err[-2000:]
  line = json.loads(out.strip().splitlines()[-1])
  assert line["serving"] and line["src_widths"] == [8, 16, 32, 64] and line["step"] == 40
  assert line["beam_size"] == translator.decode.beam_size
  assert ServedTranslator.load(tmp_path / "s").translate(sentences) == translator.translate(sentences)
  rc, _, err = _export_cli("--workdir", dates_run, "--out", tmp_path / "t", "--serving",
                           "--average_last", "2")
  assert rc == 2 and err.strip().splitlines()[-1].startswith("error: --serving does not average")
  # From a bfloat16 export, --serving keeps bfloat16 unless --dtype says otherwise.
  rc, _, err = _export_cli("--workdir", dates_run, "--out", tmp_path / "bf16", "--dtype", "bfloat16")
  assert rc == 0, err[-2000:]
  rc, out, err = _export_cli("--workdir", tmp_path / "bf16", "--out", tmp_path / "sb", "--serving")
  assert rc == 0, err[-2000:]
  assert json.loads(out.strip().splitlines()[-1])["dtype"] == "bfloat16"
