"""lmms-eval integration: the `dualspeed_llava` model (model.py; entry point manifest.py) and one evaluation through
lmms-eval's CLI (run.py). `python -m dualspeed.evaluation.lmms` evaluates a checkpoint. The synthetic sets' lmms-eval
tasks are written with the data (dualspeed/data/synth_tasks.py).

Nothing is imported here: lmms-eval loads only when a command or its model needs it.
"""
