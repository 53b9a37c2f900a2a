"""The three vocabularies of "mode", each defined once. They name different things and are spelled apart.

Training modes: how one optimizer step of a run computes its loss (dualspeed/train/losses.py).
  fast  pruned visual tokens (and the isolator where the run trains one): plain CE
  slow  the full visual sequence: CE plus the KL to the fast-mode teacher
  full  a stage that never prunes (the baseline): plain CE

Step kinds: the steps the benchmark times and the FLOPs model counts, one per variant's building block;
each is a training mode run with or without the isolator, or a full step through p-MoD's routed layers or
PyramidDrop's dropping stages.

Inference modes: how an exported checkpoint is evaluated (dualspeed/evaluation/predictor.py).
"""
from __future__ import annotations

FULL, FAST, SLOW = "full", "fast", "slow"
TRAINING_MODES = (FAST, SLOW, FULL)  # the order of every per-mode record (timing.json, the trackers)
# the number a rank sends when the ranks check that they agree on a step's mode
TRAINING_MODE_CODES = {m: i for i, m in enumerate(TRAINING_MODES)}

# step kind -> (the training mode it runs, whether the isolator is prepended)
STEP_KINDS = {"full": (FULL, False), "fast": (FAST, False), "fast_isolator": (FAST, True), "slow": (SLOW, True),
              "pmod": (FULL, False), "pdrop": (FULL, False)}

# inference mode -> (prune visual tokens, prepend the isolator). pdrop: PyramidDrop's own inference, no VTP and no
# isolator, the LLM dropping visual tokens in stages (models/pdrop.py); evaluated only where a table reads it (the
# PyramidDrop rows, the baseline's training-free use), never among eval.modes, which every checkpoint runs.
INFERENCE_MODES = {"normal": (False, False), "pruned": (True, True), "pruned_noiso": (True, False),
                   "pdrop": (False, False)}
PDROP_MODE = "pdrop"
