"""glibc told to keep freed memory, on by default in `flax-attn-train`.

XLA's CPU runtime frees its large temporaries after every step. glibc hands
blocks that large back to the kernel (`munmap`; blocks freed by XLA's worker
threads go back whatever the mmap limit says, since their arenas map large
blocks themselves), and the next step page-faults them in again, zeroed. On a
2-core VM this cost a `multi30k` run 56 M page faults and 141 s of system time
in 300 steps (PERFORMANCE.md, "Freed memory kept"). `keep_freed_memory()` does with
mallopt(3) what `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`
do from the environment: one arena for every thread, no mmap for large blocks,
and freed memory kept for the next step. The price is a higher peak RSS (freed
blocks are not returned).

It must run before JAX starts its threads (threads keep the arena they
started with). `$FLAX_ATTN_KEEP_FREED_MEMORY=0` turns it off. Library users
(`import flax_attn`) and the other CLIs are not affected: only `flax-attn-train`
calls it. Elsewhere than glibc on Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "FLAX_ATTN_KEEP_FREED_MEMORY"
OFF = ("off", "0", "false", "no")
ON = ("on", "1", "true", "yes", "")

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1   # mallopt takes an int: free memory above 2 GiB at the heap's top is returned


def _glibc() -> ctypes.CDLL | None:
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None  # another C library (musl)
  return libc


def keep_freed_memory() -> bool:
  """Sets glibc's allocator to keep freed memory (see the module docstring).

  Returns True when it did, False when `$FLAX_ATTN_KEEP_FREED_MEMORY` is off,
  the C library is not glibc, or glibc refused a setting.

  Raises:
    ValueError: `$FLAX_ATTN_KEEP_FREED_MEMORY` is neither on nor off.
  """
  value = os.environ.get(ENV, "").strip().lower()
  if value in OFF:
    return False
  if value not in ON:
    raise ValueError(f"${ENV} must be on or off (1/0, true/false, yes/no), got "
                     f"{os.environ[ENV]!r}")
  libc = _glibc()
  if libc is None:
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success, 0 on error.
  return all(libc.mallopt(param, value) == 1
             for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX)))
