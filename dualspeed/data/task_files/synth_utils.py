"""lmms-eval hooks of the synthetic tasks; copied next to their YAML by `python -m dualspeed.data synth`."""
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent  # the synthetic data root (images/ lives here)


def doc_to_visual(doc):
    return [Image.open(ROOT / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    pred = " ".join(results[0].lower().replace(".", " ").split())
    return {"exact_match": float(pred == doc["answer"].lower())}
