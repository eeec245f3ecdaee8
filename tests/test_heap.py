"""flax_attn.heap: freed memory kept by glibc, so it is not page-faulted in again."""

import os
import subprocess
import sys

import pytest

from flax_attn import heap

needs_glibc = pytest.mark.skipif(heap._glibc() is None, reason="needs glibc on Linux")

# Mallocs, touches and frees a 64 MiB block 8 times in the main thread and 8
# times in a new thread (XLA's pattern: temporaries freed after every step,
# some by worker threads), and prints the page faults that took.
_CHURN = """
import ctypes, resource, sys, threading
from flax_attn import heap
applied = heap.keep_freed_memory() if sys.argv[1] == "on" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 64 << 20
def churn():
  for _ in range(8):
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)
def faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()  # the first touch faults in any case
before = faults()
t = threading.Thread(target=churn)
t.start()
t.join()
churn()
print(applied, faults() - before)
"""

PAGES_PER_BLOCK = (64 << 20) // 4096


def _churn(mode: str, env_off: bool = False) -> tuple[str, int]:
  env = dict(os.environ, FLAX_ATTN_KEEP_FREED_MEMORY="0") if env_off else None
  out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                       check=True, env=env).stdout.split()
  return out[0], int(out[1])


@needs_glibc
def test_kept_memory_is_not_faulted_in_again():
  applied, faults_on = _churn("on")
  assert applied == "True"
  _, faults_off = _churn("off")
  # 16 blocks after the first: without the setting each is mapped and faulted
  # in afresh (16 x 16,384 pages); with it, the first block's pages are reused.
  assert faults_off > 8 * PAGES_PER_BLOCK, faults_off
  assert faults_on < PAGES_PER_BLOCK, faults_on


@needs_glibc
def test_the_environment_turns_it_off(monkeypatch):
  monkeypatch.setenv(heap.ENV, "0")
  assert heap.keep_freed_memory() is False
  applied, faults = _churn("on", env_off=True)
  assert applied == "False"
  assert faults > 8 * PAGES_PER_BLOCK, faults


def test_a_value_neither_on_nor_off_is_refused(monkeypatch):
  monkeypatch.setenv(heap.ENV, "of")
  with pytest.raises(ValueError, match="must be on or off.*'of'"):
    heap.keep_freed_memory()


def test_train_refuses_a_bad_value_before_starting(tmp_path):
  p = subprocess.run([sys.executable, "-m", "flax_attn.cli.train", "--config=dates:tiny",
                      f"--workdir={tmp_path / 'wd'}"], capture_output=True, text=True,
                     env=dict(os.environ, FLAX_ATTN_KEEP_FREED_MEMORY="of"), timeout=300, check=False)
  assert p.returncode == 2, p.stderr
  assert p.stderr.startswith("error: $FLAX_ATTN_KEEP_FREED_MEMORY must be on or off"), p.stderr
  assert not (tmp_path / "wd").exists()
