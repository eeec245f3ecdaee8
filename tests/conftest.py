"""Test setup: 4 fake CPU devices (before any JAX op) and shared helpers."""

import os
import sys

import chex

chex.set_n_cpu_devices(4)

# Make `tests.torch_seq2seq` importable as `torch_seq2seq` from every test file.
sys.path.insert(0, os.path.dirname(__file__))
