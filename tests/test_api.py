"""The public API: top-level exports, `GRUCell` inside `flax.linen.RNN`, dtypes
in the config, return type hints, `py.typed`, `init_params` argument order,
and the dependency bounds and lock file."""

import inspect
import json
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import flax_attn
from flax_attn import GRUCell, Seq2Seq, Seq2SeqConfig, init_params
from flax_attn.encoder import BiGRULayer

try:
  import tomllib
except ImportError:  # Python 3.10
  tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CFG = Seq2SeqConfig(src_vocab_size=11, trg_vocab_size=9, emb_dim=4, enc_hidden=5, dec_hidden=6,
                    attn_dim=3, dropout=0.0, init_std=0.5)


def test_decoding_is_exported_at_the_top_level():
  from flax_attn import BeamOutput, DecodeOutput, beam_search, greedy_decode
  from flax_attn import beam, greedy
  assert (greedy_decode, DecodeOutput) == (greedy.greedy_decode, greedy.DecodeOutput)
  assert (beam_search, BeamOutput) == (beam.beam_search, beam.BeamOutput)
  assert {"greedy_decode", "beam_search", "DecodeOutput", "BeamOutput"} <= set(flax_attn.__all__)
  assert all(hasattr(flax_attn, name) for name in flax_attn.__all__)
  # The names are imported on first use: every one has a home, and no other.
  assert sorted(flax_attn.__all__) == sorted(flax_attn._WHERE)
  assert set(flax_attn.__all__) <= set(dir(flax_attn))
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    flax_attn.nope


# ---- GRUCell as a flax RNN cell ---------------------------------------------------------

def test_gru_cell_protocol():
  cell = GRUCell(input_dim=3, hidden_dim=4)
  assert isinstance(cell, nn.RNNCellBase) and cell.num_feature_axes == 1
  carry = cell.initialize_carry(jax.random.key(0), (2, 7, 3))
  assert carry.shape == (2, 7, 4) and carry.dtype == jnp.float32 and not carry.any()
  x = jax.random.normal(jax.random.key(1), (2, 7, 3))
  h = jax.random.normal(jax.random.key(2), (2, 7, 4))
  params = cell.init(jax.random.key(3), h, x)
  new_carry, out = cell.apply(params, h, x)
  np.testing.assert_array_equal(new_carry, out)
  # PyTorch's nn.GRU: gates (r, z, n), r multiplies W_hn h + b_hn.
  p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
  gi = np.asarray(x) @ p["input_kernel"] + p["input_bias"]
  gh = np.asarray(h) @ p["recurrent_kernel"] + p["recurrent_bias"]
  sig = lambda a: 1 / (1 + np.exp(-a))
  r, z = sig(gi[..., :4] + gh[..., :4]), sig(gi[..., 4:8] + gh[..., 4:8])
  n = np.tanh(gi[..., 8:] + r * gh[..., 8:])
  np.testing.assert_allclose(out, (1 - z) * n + z * np.asarray(h), atol=1e-6)
  with pytest.raises(ValueError, match="input has 5 features but input_dim=3"):
    cell.apply(params, h, jnp.ones((2, 7, 5)))


def test_gru_cell_in_nn_rnn_equals_the_encoders_own_scan():
  """`nn.Bidirectional(nn.RNN(GRUCell), nn.RNN(GRUCell, reverse=True,
  keep_order=True))` with `seq_lengths` gives the encoder layer's outputs at
  real positions and its final states, with the same parameters."""
  batch, length, d_in, hidden = 3, 6, 4, 5
  x_BxSxD = jax.random.normal(jax.random.key(0), (batch, length, d_in))
  lengths = jnp.array([6, 2, 4])
  mask_BxS = jnp.arange(length)[None] < lengths[:, None]
  layer = BiGRULayer(input_dim=d_in, hidden_dim=hidden, init_std=0.5)
  args = (x_BxSxD.transpose(1, 0, 2), lengths, mask_BxS.T)
  p = layer.init(jax.random.key(1), *args)["params"]
  out_SxBx2H, h_fwd, h_bwd = layer.apply({"params": p}, *args)

  cell = lambda: GRUCell(input_dim=d_in, hidden_dim=hidden)
  bi = nn.Bidirectional(nn.RNN(cell()), nn.RNN(cell(), reverse=True, keep_order=True),
                        return_carry=True)
  rnn_params = {"forward_rnn": {"cell": p["fwd"]}, "backward_rnn": {"cell": p["bwd"]}}
  (c_fwd, c_bwd), out = bi.apply({"params": rnn_params}, x_BxSxD, seq_lengths=lengths)
  mine = np.asarray(out_SxBx2H.transpose(1, 0, 2))
  real = np.asarray(mask_BxS)
  np.testing.assert_allclose(np.asarray(out)[real], mine[real], atol=1e-6)
  np.testing.assert_allclose(c_fwd, h_fwd, atol=1e-6)
  np.testing.assert_allclose(c_bwd, h_bwd, atol=1e-6)


# ---- dtypes in the config -----------------------------------------------------------------

@pytest.mark.parametrize("given", [jnp.bfloat16, "bfloat16", np.dtype("bfloat16"),
                                   jnp.dtype(jnp.bfloat16)])
def test_config_takes_dtypes_and_names(given):
  cfg = Seq2SeqConfig(src_vocab_size=11, trg_vocab_size=9, dtype=given, param_dtype=jnp.float32)
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "float32")
  assert cfg.compute_dtype == jnp.bfloat16 and cfg.params_dtype == jnp.float32
  assert cfg == Seq2SeqConfig(src_vocab_size=11, trg_vocab_size=9, dtype="bfloat16")
  assert hash(cfg) == hash(Seq2SeqConfig(src_vocab_size=11, trg_vocab_size=9, dtype="bfloat16"))
  assert Seq2SeqConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("given", ["int32", jnp.float64, "float", "nope", None])
def test_config_rejects_other_dtypes(given):
  with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
    Seq2SeqConfig(src_vocab_size=11, trg_vocab_size=9, dtype=given)


@pytest.mark.slow
def test_bf16_config_given_as_a_jnp_dtype_runs():
  cfg = Seq2SeqConfig(**{**CFG.to_dict(), "dtype": jnp.bfloat16})
  params = init_params(jax.random.key(0), cfg)
  logits = Seq2Seq(cfg).apply({"params": params}, jnp.array([[5, 3]]), jnp.array([2]),
                              jnp.array([[2, 4]]))
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()


# ---- init_params ----------------------------------------------------------------------

def test_init_params_takes_flax_order_and_the_old_one():
  key = jax.random.key(3)
  new, old = init_params(key, CFG), init_params(CFG, key)
  assert jax.tree.structure(new) == jax.tree.structure(old)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
    np.testing.assert_array_equal(a, b)
  by_name = init_params(config=CFG, rng=key)
  np.testing.assert_array_equal(by_name["decoder"]["out_bias"], new["decoder"]["out_bias"])
  with pytest.raises(TypeError, match="config must be a Seq2SeqConfig, got dict"):
    init_params(key, CFG.to_dict())
  with pytest.raises(TypeError, match="rng must be a JAX random key"):
    init_params(0, CFG)


# ---- type hints and packaging -----------------------------------------------------------

# The modules this issue covers; each public function and method has a return type.
TYPED_MODULES = ["attention", "beam", "config", "decoder", "deferred", "encoder", "greedy", "gru",
                 "model", "parallel"]


def _public_callables():
  import importlib
  for name in TYPED_MODULES:
    module = importlib.import_module(f"flax_attn.{name}")
    for attr, obj in vars(module).items():
      if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
        continue
      if inspect.isfunction(obj):
        yield f"{name}.{attr}", obj
      elif inspect.isclass(obj):
        for meth_name, meth in vars(obj).items():
          meth = getattr(meth, "__func__", meth)  # classmethods, staticmethods
          if (inspect.isfunction(meth) and meth.__module__ == module.__name__  # not generated
              and (meth_name == "__call__" or not meth_name.startswith("_"))):
            yield f"{name}.{attr}.{meth_name}", meth


def test_public_functions_have_return_types():
  found = dict(_public_callables())
  assert {"model.init_params", "greedy.greedy_decode", "beam.beam_search",
          "attention.AdditiveAttention.__call__", "gru.GRUCell.initialize_carry",
          "config.Seq2SeqConfig.from_dict"} <= set(found)
  missing = [name for name, f in found.items()
             if inspect.signature(f).return_annotation is inspect.Signature.empty]
  assert not missing, f"no return type: {missing}"


def test_py_typed_ships_with_the_package():
  assert (REPO / "flax_attn" / "py.typed").is_file()
  pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
  assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["flax_attn"]


# ---- dependencies -----------------------------------------------------------------------

def _pyproject():
  return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_library_dependencies_have_lower_bounds_only():
  project = _pyproject()
  for dep in project["dependencies"]:
    req = Requirement(dep)
    ops = {s.operator for s in req.specifier}
    assert ops == {">="}, f"{dep}: a library pins lower bounds only"
  assert project["optional-dependencies"]["torch"] == ["torch>=2"]
  assert {Requirement(d).name for d in project["optional-dependencies"]["test"]} >= {
      "pytest", "pytest-xdist", "hypothesis"}


def test_lock_file_pins_every_runtime_dependency_within_its_bounds():
  text = (REPO / "requirements-lock.txt").read_text()
  assert "pip install -c requirements-lock.txt -e ." in text
  pins = {}
  for line in text.splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
      pins[name.lower().replace("_", "-")] = Version(version)
  for dep in _pyproject()["dependencies"]:
    req = Requirement(dep)
    name = req.name.lower().replace("_", "-")
    assert name in pins, f"{req.name} is not in requirements-lock.txt"
    assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {dep}"
  assert "jaxlib" in pins and pins["jaxlib"] == pins["jax"]
