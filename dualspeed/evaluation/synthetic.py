"""Exact-match accuracy of a checkpoint on the synthetic held-out sets (no lmms-eval needed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tqdm import tqdm

from ..data.synth_tasks import TASKS
from .predictor import Predictor, Query


def normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def evaluate(ckpt, data_dir, tasks=TASKS, mode="normal", limit=None, **kw) -> dict:
    data_dir = Path(data_dir)
    pred = Predictor(ckpt, mode=mode, **kw)
    scores = {}
    for task in tasks:
        name = task.removeprefix("synth_")  # same task names as the lmms-eval backend
        path = data_dir / f"eval_{name}.json"
        if name not in TASKS or not path.is_file():
            raise FileNotFoundError(f"no held-out set for task '{task}' ({path}); known: "
                                    f"{', '.join('synth_' + t for t in TASKS)}")
        rows = json.loads(path.read_text())[:limit]
        with tqdm(total=len(rows), desc=f"{task} ({mode})", unit="q") as bar:
            answers = pred.predict([Query(r["question"], data_dir / r["image"]) for r in rows], progress=bar)
        scores[task] = 100.0 * sum(normalize(a) == normalize(r["answer"]) for a, r in zip(answers, rows)) / len(rows)
    return {"scores": scores, "mean": sum(scores.values()) / len(scores), **pred.summary()}
