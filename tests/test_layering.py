"""Layering: the product code never reaches into tests/, and only
`flax_attn.reference` needs torch.

Every `.py` file under `flax_attn/` and `experiments/` is parsed with `ast`
(each import statement, at any depth, and `importlib.import_module` /
`__import__` calls with a literal name), and:

* none imports `tests`, `conftest`, `_runs` (test helpers) or the bare module
  names the PyTorch reference models had when they lived in tests/
  (`torch_seq2seq`, `torch_hoisted`; now `flax_attn.reference.*`), and none
  puts a `tests` folder on `sys.path`;
* no module of `flax_attn/` but the reference modules (`flax_attn/reference/`,
  not its `__init__`) imports `torch` or a reference module, so
  `import flax_attn` and `import flax_attn.reference` work without torch
  (checked again at run time in a fresh interpreter).

The checker itself is shown to fail on such imports (`test_checker_catches`).
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PRODUCT_DIRS = ("flax_attn", "experiments")
REFERENCE = ("flax_attn", "reference")
# First component of an import that product code must never name.
TEST_ONLY = frozenset({"tests", "conftest", "_runs", "torch_seq2seq", "torch_hoisted"})


def _dotted(path: pathlib.Path) -> tuple[str, ...]:
  """`flax_attn/reference/torch_hoisted.py` -> ("flax_attn", "reference", "torch_hoisted")."""
  parts = path.relative_to(REPO).with_suffix("").parts
  return parts[:-1] if parts[-1] == "__init__" else parts


def imported_names(source: str, module: tuple[str, ...] = (),
                   is_package: bool = False) -> list[str]:
  """Every module name `source` imports, resolved to an absolute dotted name
  (`from a import b` gives `a` and `a.b`; relative imports are resolved
  against `module`)."""
  names = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module if is_package else module[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join((*package, base) if base else package)
      names.append(base)
      names += [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
      f = node.func
      called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
      if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
        names.append(node.args[0].value)
  return [n for n in names if n]


def adds_tests_to_sys_path(source: str) -> bool:
  """Whether `source` edits `sys.path` and names a `tests` folder (a string
  `"tests"`, `".../tests"` or `"tests/"`: the path it would add)."""
  tree = ast.parse(source)
  edits = any(isinstance(n, ast.Attribute) and ast.unparse(n) == "sys.path"
              for n in ast.walk(tree))
  names_tests = any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                    and re.search(r"(^|[/\\])tests[/\\]?$", n.value)
                    for n in ast.walk(tree))
  return edits and names_tests


def violations(source: str, module: tuple[str, ...], is_package: bool = False) -> list[str]:
  """What `source` (the module `module`) imports that the layering forbids."""
  out = []
  in_flax_attn = module[:1] == ("flax_attn",)
  in_reference = module[:2] == REFERENCE and len(module) > 2   # not its __init__
  for name in imported_names(source, module, is_package):
    parts = tuple(name.split("."))
    if parts[0] in TEST_ONLY:
      out.append(f"imports {name} (test-only)")
    if in_flax_attn and not in_reference:
      if parts[0] == "torch":
        out.append(f"imports {name} (torch outside the reference modules)")
      if parts[:2] == REFERENCE and len(parts) > 2:
        out.append(f"imports {name} (a torch module, outside the reference modules)")
  if adds_tests_to_sys_path(source):
    out.append("puts tests/ on sys.path")
  return out


def _product_files() -> list[pathlib.Path]:
  files = sorted(p for d in PRODUCT_DIRS for p in (REPO / d).rglob("*.py"))
  assert len(files) > 40, files   # the walk found the code
  return files


def test_product_code_imports_no_test_module_and_torch_only_in_reference():
  found = {}
  for path in _product_files():
    bad = violations(path.read_text(), _dotted(path), path.name == "__init__.py")
    if bad:
      found[str(path.relative_to(REPO))] = bad
  assert not found


def test_reference_modules_are_where_the_tests_and_benchmark_import_them():
  for name in ("__init__", "torch_seq2seq", "torch_hoisted"):
    assert (REPO / "flax_attn" / "reference" / f"{name}.py").is_file()
  for name in ("torch_seq2seq", "torch_hoisted"):
    assert not (REPO / "tests" / f"{name}.py").exists()


@pytest.mark.parametrize("module, source", [
    (("experiments", "bench", "torch_cases"),
     "try:\n  import torch_hoisted\nexcept ImportError:\n  pass\n"),
    (("experiments", "bench", "torch_cases"), "from torch_seq2seq import build\n"),
    (("experiments", "benchmark"), "from tests import torch_seq2seq\n"),
    (("experiments", "benchmark"), "import tests.torch_hoisted\n"),
    (("flax_attn", "train"), "def f():\n  from _runs import run\n"),
    (("flax_attn", "train"), "import conftest\n"),
    (("flax_attn", "train"), "import importlib\nimportlib.import_module('torch_seq2seq')\n"),
    (("flax_attn", "convert"), "def f():\n  import torch\n"),
    (("flax_attn", "convert"), "from torch import nn\n"),
    (("flax_attn", "convert"), "from flax_attn.reference import torch_seq2seq\n"),
    (("flax_attn", "tasks", "dates"), "from ..reference import torch_hoisted\n"),
    (("flax_attn", "reference"), "import torch\n"),
    (("experiments", "benchmark"),
     "import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), 'tests'))\n"),
    (("experiments", "benchmark"),  # the loop benchmark.py had
     "for _p in (_REPO, _HERE, os.path.join(_REPO, 'tests')):\n  sys.path.insert(0, _p)\n"),
    (("experiments", "benchmark"), "sys.path += ['../tests/']\n"),
])
def test_checker_catches(module, source):
  assert violations(source, module)


@pytest.mark.parametrize("module, source", [
    (("experiments", "bench", "torch_cases"),
     "from flax_attn.reference import torch_hoisted, torch_seq2seq\n"),
    (("flax_attn", "reference", "torch_hoisted"),
     "import torch\nfrom flax_attn.reference import torch_seq2seq\n"),
    (("flax_attn", "reference", "torch_hoisted"), "from . import torch_seq2seq\n"),
    (("flax_attn", "train"), "from flax_attn import reference\nimport flax_attn.tasks\n"),
    (("experiments", "benchmark"), "import torch\nimport sys\nsys.path.insert(0, 'experiments')\n"),
    (("flax_attn", "model"),
     '"""As `tests/test_model.py` shows."""\nimport sys\nsys.path.insert(0, "x")\n'),
])
def test_checker_allows(module, source):
  assert violations(source, module) == []


def test_importing_every_flax_attn_module_but_the_references_leaves_torch_unloaded():
  """In a fresh interpreter (this one may hold torch already)."""
  modules = sorted(".".join(d) for d in map(_dotted, (REPO / "flax_attn").rglob("*.py"))
                   if d[:2] != REFERENCE or d == REFERENCE)
  assert "flax_attn" in modules and "flax_attn.reference" in modules
  assert not any(m.startswith("flax_attn.reference.") for m in modules)
  # Entry points define absl flags when imported (two may share a name): each
  # module's new flags are dropped so that the next may define its own.
  code = ("import importlib, sys\n"
          "from absl import flags\n"
          f"for m in {modules!r}:\n"
          "  before = set(flags.FLAGS)\n"
          "  importlib.import_module(m)\n"
          "  for name in set(flags.FLAGS) - before:\n"
          "    delattr(flags.FLAGS, name)\n"
          "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
          "assert not loaded, loaded[:5]\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
