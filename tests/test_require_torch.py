"""`conftest.require_torch`: a skip without torch, a failure when CI requires it."""

import sys

import pytest
from conftest import REQUIRE_TORCH_ENV, require_torch


def test_missing_torch_skips_or_fails(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` now raises
  monkeypatch.delenv(REQUIRE_TORCH_ENV, raising=False)
  with pytest.raises(pytest.skip.Exception):
    require_torch()
  monkeypatch.setenv(REQUIRE_TORCH_ENV, "1")
  with pytest.raises(pytest.fail.Exception, match=REQUIRE_TORCH_ENV):
    require_torch()
