"""A user's own benchmark (eval.local_tasks) as local lmms-eval tasks, scored like the synthetic ones.

Each task is a JSON list of rows {"question", "image", "answer"} with an optional "choices" list: without choices
the model's generated answer is compared to "answer" by exact match after the synthetic tasks' normalisation;
with choices the task is multiple choice (the choice the model gives the highest likelihood, `acc`).
Standard library only: the pipeline checks task names and paths when it plans a run.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

_COMMON = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
doc_to_visual: !function local_utils.doc_to_visual
doc_to_text: !function local_utils.doc_to_text
metadata:
  version: 1.0
  description: "{name}: a local task of the user's own data (eval.local_tasks)"
"""
EXACT = _COMMON + """output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
process_results: !function local_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
CHOICE = _COMMON + """output_type: multiple_choice
doc_to_choice: choices
doc_to_target: !function local_utils.doc_to_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def row_problem(row, i: int) -> str | None:
    """What is wrong with row i of a task file, or None."""
    if not isinstance(row, dict):
        return f"row #{i}: expected an object with question, image, answer, got {type(row).__name__}"
    for key in ("question", "image", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"row #{i}: '{key}' must be a non-empty string, got {row.get(key)!r}"
    if "choices" in row:
        ch = row["choices"]
        if not (isinstance(ch, list) and len(ch) >= 2 and all(isinstance(c, str) and c.strip() for c in ch)):
            return f"row #{i}: 'choices' must be a list of two or more non-empty strings, got {ch!r}"
        if row["answer"] not in ch:
            return f"row #{i}: answer {row['answer']!r} is not one of its choices {ch}"
    return None


def read_task(name: str, json_path, image_folder) -> list[dict]:
    """The rows of one task, structure checked (images are opened by the data check, not here); every row must
    agree on whether it has choices, since a task has one output type."""
    where = f"eval.local_tasks.{name}.json ({json_path})"
    try:
        rows = json.loads(Path(json_path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{where}: expected a non-empty JSON list of rows {{question, image, answer[, choices]}}")
    for i, r in enumerate(rows):
        why = row_problem(r, i)
        if why:
            raise ValueError(f"{where}: {why}")
    if len({"choices" in r for r in rows}) > 1:
        raise ValueError(f"{where}: some rows have 'choices' and some do not; a task is either multiple choice "
                         "(every row) or exact match (none)")
    return rows


def write_tasks(out: Path, tasks: dict[str, list[dict]], folders: dict[str, str]) -> dict:
    """Each task's rows (image paths made absolute) and its YAML in `out`, with local_utils.py beside them."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parent / "task_files" / "local_utils.py", out / "local_utils.py")
    meta = {}
    for name, rows in tasks.items():
        folder = Path(folders[name]).resolve()
        data = [{**r, "image": str(folder / r["image"])} for r in rows]
        (out / f"{name}.json").write_text(json.dumps(data, indent=1))
        choice = "choices" in rows[0]
        template = CHOICE if choice else EXACT
        (out / f"{name}.yaml").write_text(template.format(name=name, data_file=(out / f"{name}.json").resolve()))
        meta[name] = {"rows": len(rows), "scoring": "multiple choice (acc)" if choice else "exact match"}
    return meta


def task_texts(rows: list[dict]) -> list[str]:
    return [t for r in rows for t in [r["question"], r["answer"], *r.get("choices", [])]]
