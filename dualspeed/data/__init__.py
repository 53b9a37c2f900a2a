"""Data: the conversation format (conversation.py), a data file's samples (samples.py), image preprocessing
(images.py), the training data set and collator (dataset.py), the pre-run data check (check.py), LLaVA's
modality-grouped sampler (sampler.py), the synthetic generator (synth.py) and its tasks (synth_tasks.py),
and downloads with checks (fetch.py). `python -m dualspeed.data` runs check, synth and fetch.

Nothing is imported here: the pipeline reads synth_tasks when it plans a run, without torch or PIL.
"""
