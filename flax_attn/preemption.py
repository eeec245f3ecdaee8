"""Stopping on SIGTERM/SIGINT at a point every process agrees on.

`Preemption.tick()` is called at every point where all processes are in
step with each other (each train step, each evaluation batch). It returns
True at the tick where the run must stop, and it returns True on every
process at the same tick:

* one process (no `jax.distributed`): a SIGTERM or SIGINT sets a flag that
  the next tick reads (a second SIGINT interrupts at once);
* several processes: JAX's own preemption sync manager (started by
  `jax.distributed.initialize`, which installs the SIGTERM handler) shares a
  notice received by ANY process with all of them and picks the tick;
  `reached_preemption_sync_point(tick)` is JAX's helper for it. SIGINT is
  forwarded to that handler as a SIGTERM.

The run then saves a checkpoint and exits with `EXIT_PREEMPTED` so that a
scheduler restarts it; rerunning the same command resumes.
"""

from __future__ import annotations

import logging
import os
import signal

import jax

# sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry".
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """Raised to abandon work (an evaluation) when the run must stop."""


class Preemption:
  """Signal handling and the agreed stop tick (see the module docstring)."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.tick_count = 0
    self.signal: int | None = None
    self.stopped = False
    self._old = {}

  def __enter__(self) -> "Preemption":
    if self.multi_process:
      self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward_sigint)
    else:
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._on_signal)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._old.items():
      signal.signal(s, handler)
    self._old.clear()

  def _on_signal(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    self.signal = signum
    logging.warning("received %s: stopping at the next step boundary",
                    signal.Signals(signum).name)

  def _forward_sigint(self, signum, frame) -> None:
    del signum, frame
    self.signal = signal.SIGINT
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler shares it with all processes

  def tick(self) -> bool:
    """True when every process must stop here (then True on every later call)."""
    if self.stopped:
      return True
    self.tick_count += 1
    if self.multi_process:
      from jax.experimental import multihost_utils
      self.stopped = bool(multihost_utils.reached_preemption_sync_point(self.tick_count))
    else:
      self.stopped = self.signal is not None
    return self.stopped

  def check(self) -> None:
    """`tick()`, raising `Preempted` when the run must stop."""
    if self.tick():
      raise Preempted()
