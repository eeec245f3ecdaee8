"""`pip install` alone runs the experiments: a wheel built from this checkout,
installed into a fresh virtual environment outside it, trains `dates:tiny`
by config name with the console scripts and evaluates the result."""

import json
import os
import site
import subprocess
import sys
import venv

import pytest
from _runs import REPO, TIMEOUT

pytestmark = pytest.mark.slow


def _sh(cmd, cwd, env=None):
  p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stderr[-3000:]}"
  return p


def test_a_wheel_outside_the_checkout_trains_a_config_by_name(tmp_path):
  wheels = tmp_path / "wheels"
  _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", str(wheels), str(REPO)], cwd=tmp_path)
  (wheel,) = wheels.glob("flax_attn-*.whl")
  env_dir = tmp_path / "env"
  venv.EnvBuilder(with_pip=True).create(env_dir)  # ensurepip: pip from the standard library
  py, bin_dir = env_dir / "bin" / "python", env_dir / "bin"
  _sh([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
  target = _sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=tmp_path).stdout.strip()
  # The dependencies come from this environment's site-packages (a plain
  # path: the editable install's finder there is not run, so nothing of the
  # checkout is importable).
  with open(os.path.join(target, "zz_dependencies.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  env.update(FLAX_ATTN_COMPILATION_CACHE="off", XLA_FLAGS="")
  where = _sh([str(py), "-c", "import flax_attn, flax_attn.configs as c; "
               "print(flax_attn.__file__); print(','.join(c.names()))"], cwd=outside, env=env)
  module_file, names = where.stdout.split()
  assert module_file.startswith(target) and not module_file.startswith(str(REPO)), module_file
  assert {"dates", "g2p", "multi30k", "multi30k_en_de"} <= set(names.split(","))
  assert sorted(p.name for p in bin_dir.glob("flax-attn-*")) == [
      "flax-attn-evaluate", "flax-attn-export", "flax-attn-train", "flax-attn-translate"]

  trained = _sh([str(bin_dir / "flax-attn-train"), "--config", "dates:tiny", "--workdir", "run"],
                cwd=outside, env=env)
  result = json.loads(trained.stdout.strip().splitlines()[-1])
  assert result["step"] == 20 and (outside / "run" / "metrics.jsonl").exists()
  evaluated = _sh([str(bin_dir / "flax-attn-evaluate"), "--workdir", "run", "--split", "test"],
                  cwd=outside, env=env)
  assert json.loads(evaluated.stdout)["exact_match"] == result["test"]["exact_match"]
