"""DualSpeed reproduction harness.

Subpackages by concern, each importing only from those listed before it (tests/test_layers.py holds the order):
cli, envlock, provenance, modes (the foundation); vtp (pruning methods); config (the run config); data;
models; grid (the paper's grid, read at plan time); train; evaluation; report; bench.
"""
