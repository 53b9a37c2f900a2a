"""Training: one stage of one run (run.py), the Trainer and its step (trainer.py), freezing by stage
(freeze.py), the fast-slow losses (losses.py), resume (resume.py), the per-step log (steplog.py) and its
FLOPs (step_flops.py), experiment tracking (tracking.py), peak memory (memory.py), and the DeepSpeed
configs (configs/). `python -m dualspeed.train` runs one stage.
"""
