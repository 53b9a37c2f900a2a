"""lmms-eval hooks of the local tasks (eval.local_tasks); copied next to their YAML by `python -m dualspeed.data
local`. Image paths in the task's rows are absolute. The normalisation is synth_utils.py's, character for character:
a local task is scored as the synthetic ones are."""
from PIL import Image


def normalize(text):
    return " ".join(text.lower().replace(".", " ").split())


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_target(doc):
    return doc["choices"].index(doc["answer"])


def process_results(doc, results):
    return {"exact_match": float(normalize(results[0]) == normalize(doc["answer"]))}
