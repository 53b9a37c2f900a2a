"""Evaluation of exported checkpoints: batched inference in each inference mode (predictor.py), the synthetic
held-out sets (synthetic.py), the loop over modes every evaluator shares (runner.py), and lmms-eval (lmms/).
`python -m dualspeed.evaluation` scores the synthetic sets; `python -m dualspeed.evaluation.lmms` runs lmms-eval.
"""
