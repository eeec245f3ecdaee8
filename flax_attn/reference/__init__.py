"""PyTorch ports used by the parity tests and the benchmarks.

* `torch_seq2seq`: the tutorial's model (bentrevett/pytorch-seq2seq tutorial
  4), the reference whose `state_dict` `flax_attn.convert.params_from_torch`
  reads;
* `torch_hoisted`: the same function with joeynmt-style hoisting, the second
  PyTorch peer of `experiments/benchmark.py`.

Importing `flax_attn.reference` does not import torch; only its modules do:
`from flax_attn.reference import torch_seq2seq` needs torch
(`pip install -e '.[torch]'`). Nothing else in `flax_attn` imports them.
"""
