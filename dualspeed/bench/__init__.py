"""Benchmarks: the presets (presets.py) and the model each describes (preset_model.py), step time of every
variant (step_time.py), the cost of every VTP method (vtp_cost.py), the FLOPs model for a preset or a recipe
(flops_report.py), p-MoD's and PyramidDrop's prefill counted by torch
(pmod_measure.py, pdrop_measure.py), and inference throughput
(throughput.py). `python -m dualspeed.bench` runs them.
"""
