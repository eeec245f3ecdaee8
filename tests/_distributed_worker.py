"""One process of the 2-process jax.distributed test (run by test_train.py)."""

import sys

import numpy as np


def main(coordinator: str, num_processes: int, process_id: int, out: str) -> None:
  import functools

  from flax_attn import parallel
  parallel.initialize(coordinator, num_processes, process_id)
  import jax

  from flax_attn.optimizer import make_optimizer
  from flax_attn.steps import create_train_state, train_step
  from test_train import CFG, global_batch

  assert jax.process_count() == num_processes and jax.device_count() == num_processes
  tx = make_optimizer(learning_rate=1e-2)
  state = parallel.replicate(create_train_state(CFG, tx, seed=0))
  step = parallel.pmap(functools.partial(train_step, model_config=CFG, tx=tx))
  for i in range(3):
    state, metrics = step(state, parallel.device_batch(global_batch(i)))
  params = parallel.unreplicate(state.params)
  np.savez(out, loss=parallel.unreplicate(metrics)["loss_sum"],
           **{"/".join(str(k.key) for k in path): leaf
              for path, leaf in jax.tree_util.tree_leaves_with_path(params)})


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
