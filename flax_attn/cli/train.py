"""Train an experiment: flax-attn-train --config dates --workdir DIR.

(`python experiments/train.py ...` and `python -m flax_attn.cli.train ...`
are the same.) `--config` takes a published config by name (`dates`, `g2p`,
`multi30k`, ...: `flax_attn/configs/`) or a file with `get_config(preset)`;
`--config dates:tiny` picks a preset; `--config.key=value` overrides any
field. Rerunning the same command in the same workdir resumes from its
latest checkpoint. `--workdir` may be a `gs://` URL. On Linux (glibc) it
keeps freed memory for the next step (`flax_attn.heap`;
`FLAX_ATTN_KEEP_FREED_MEMORY=0` turns that off).

Exit codes: 0 done; 1 training stopped on non-finite losses; 2 bad config,
or checkpoints that cannot be restored (the message names the step and the
cause); 75 stopped by SIGTERM/SIGINT after saving a checkpoint: rerun the
same command to resume (a scheduler should restart the job).
"""

import faulthandler
import logging
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from flax_attn import configs, heap

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config name or file, [:preset]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and figures")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def _usage_error(problem: str):
  """A one-line error and a short usage naming the configs; exit code 2."""
  print(f"error: {problem}\n"
        f"usage: flax-attn-train --config CONFIG[:tiny] --workdir DIR [--config.FIELD=VALUE ...]; "
        f"CONFIG is a file or one of: {', '.join(configs.names())}", file=sys.stderr)
  sys.exit(2)


def _config_by_name(argv: list[str]) -> list[str]:
  """`--config NAME[:preset]` (a published config) as its file, which is
  what `ml_collections`' config flag loads; files pass unchanged."""
  out, it = [], iter(argv)
  for arg in it:
    if arg == "--config":
      value = next(it, None)
      out += [arg] + ([] if value is None else [configs.resolve(value)])
    elif arg.startswith("--config="):
      out.append("--config=" + configs.resolve(arg.split("=", 1)[1]))
    else:
      out.append(arg)
  return out


def _parse_flags(argv):
  """absl's parser; a missing or bad flag, an unreadable config file or an
  unknown `--config.x` is a one-line error plus usage, exit code 2."""
  if len(argv) == 1:
    _usage_error("--config and --workdir are required")
  try:
    argv = _config_by_name(argv)
  except ValueError as e:  # an unknown config name
    _usage_error(str(e))
  try:
    rest = FLAGS(argv)
    FLAGS.config.get("task")  # a config file that failed to load raises here
  except OSError as e:  # ml_collections reports a missing config file lazily
    _usage_error(" ".join(str(e).split("\n")[-1].split()))
  except flags.Error as e:
    text = str(e).strip()
    if "Traceback (most recent call last)" in text:  # the config file's get_config raised
      text = f"{text.split(': ', 1)[0]}: {text.splitlines()[-1].strip()}"
    _usage_error(" ".join(text.split()))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # from --config.FIELD
    _usage_error(f"bad --config override: {' '.join(str(e).split())}")
  if len(rest) > 1:
    _usage_error(f"unexpected arguments {rest[1:]}")
  return rest


def main(argv):
  # `kill -USR1 <pid>` prints every thread's Python stack (a hung host on a pod, say).
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every file at INFO
  del argv
  # Imported here, after `run` set up the allocator: they import JAX.
  from flax_attn import checkpoint, compilation_cache, preemption, train
  compilation_cache.enable()  # FLAX_ATTN_COMPILATION_CACHE=off to disable
  logging.getLogger().setLevel(logging.WARNING)
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.coordinator_address:
      config.coordinator_address = FLAGS.coordinator_address
      config.num_processes = FLAGS.num_processes
      config.process_id = FLAGS.process_id
  try:
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except train.TrainingPreempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(preemption.EXIT_PREEMPTED)
  except train.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except (checkpoint.RestoreError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import json

  from flax_attn.stopwatch import Stopwatch
  print(Stopwatch.describe(result["time"]), file=sys.stderr)
  print(json.dumps({k: v for k, v in result.items()}, default=str))


def run() -> None:
  """The `flax-attn-train` console script."""
  try:
    heap.keep_freed_memory()  # before JAX's threads start; FLAX_ATTN_KEEP_FREED_MEMORY=0 to disable
  except ValueError as e:
    _usage_error(str(e))
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
