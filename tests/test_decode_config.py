"""DecodeConfig: one place for the decoding defaults and rules, read from a
config's `decode` group (or an old checkpoint's top-level `beam_size`)."""

import ml_collections
import pytest

from flax_attn import decode_config
from flax_attn.decode_config import DecodeConfig


def test_defaults_are_greedy_with_the_documented_limits():
  d = DecodeConfig()
  assert d.to_dict() == {"beam_size": 1, "alpha": 0.6, "max_len_ratio": 1.5,
                         "max_len_offset": 10}
  assert d.tag == ".beam1"
  assert DecodeConfig(beam_size=5, alpha=1.0).tag == ".beam5.alpha1"


@pytest.mark.parametrize("fields, message", [
    (dict(beam_size=0), "beam_size must be an integer >= 1, got 0"),
    (dict(beam_size=2.0), "beam_size must be an integer >= 1, got 2.0"),
    (dict(beam_size=True), "beam_size must be an integer >= 1, got True"),
    (dict(alpha=-0.1), "alpha must be >= 0, got -0.1"),
    (dict(alpha=float("nan")), "alpha must be >= 0, got nan"),
    (dict(max_len_ratio=-1.0), "max_len_ratio must be >= 0"),
    (dict(max_len_offset=1.5), "max_len_offset must be an integer >= 0"),
])
def test_bad_values_are_one_line_errors(fields, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
    DecodeConfig(**fields)
  assert "\n" not in str(e.value)


def test_n_best_rule_names_fields_with_the_callers_prefix():
  with pytest.raises(ValueError, match=r"--n_best must be between 1 and --beam_size \(2\), got 3"):
    decode_config.check(2, n_best=3, prefix="--")
  decode_config.check(3, n_best=3)


def test_replace_changes_only_the_fields_given():
  d = DecodeConfig(beam_size=10, alpha=1.0)
  assert d.replace(beam_size=None, alpha=None) == d
  assert d.replace(beam_size=1) == DecodeConfig(beam_size=1, alpha=1.0)
  with pytest.raises(ValueError, match="beam_size"):
    d.replace(beam_size=0)


def test_from_experiment_reads_the_group_of_a_configdict_and_of_json():
  c = ml_collections.ConfigDict({"decode": {"beam_size": 10, "alpha": 1.0,
                                            "max_len_ratio": 2.0, "max_len_offset": 5}})
  want = DecodeConfig(beam_size=10, alpha=1.0, max_len_ratio=2.0, max_len_offset=5)
  assert DecodeConfig.from_experiment(c) == want
  assert DecodeConfig.from_experiment(c.to_dict()) == want
  # A partial group keeps the defaults for the rest.
  assert DecodeConfig.from_experiment({"decode": {"beam_size": 4}}) == DecodeConfig(beam_size=4)


def test_a_checkpoint_from_before_the_group_keeps_its_beam():
  """Older runs stored `beam_size` at the top level and decoded with the
  then-fixed defaults (alpha 0.6, ratio 1.5, offset 10)."""
  assert DecodeConfig.from_experiment({"beam_size": 5}) == DecodeConfig(beam_size=5)
  assert DecodeConfig.from_experiment({}) == DecodeConfig()
  assert DecodeConfig.from_experiment(None) == DecodeConfig()


def test_from_experiment_errors_name_the_config_field():
  with pytest.raises(ValueError, match="decode.beam_size must be an integer >= 1, got 0"):
    DecodeConfig.from_experiment({"decode": {"beam_size": 0}})
  with pytest.raises(ValueError, match="unknown field.*decode.beam"):
    DecodeConfig.from_experiment({"decode": {"beam": 5}})


@pytest.mark.parametrize("name, beam_size, alpha", [
    ("multi30k", 10, 1.0), ("multi30k_en_de", 10, 1.0), ("multi30k_tutorial", 1, 0.6),
    ("g2p", 5, 0.6), ("dates", 1, 0.6),
])
def test_published_configs_carry_their_decoding(name, beam_size, alpha):
  """Each config holds the decoding its published figure used (README)."""
  from test_experiments import _config
  d = DecodeConfig.from_experiment(_config(name))
  assert (d.beam_size, d.alpha) == (beam_size, alpha)


def test_validate_config_rejects_a_bad_decode_group():
  from flax_attn import from_config
  from test_experiments import _config
  c = _config("dates", "tiny")
  c.decode.beam_size = 0
  with pytest.raises(ValueError, match="^config: decode.beam_size must be an integer >= 1"):
    from_config.validate_config(c, 1, 1)
