"""The synthetic tasks, and their held-out sets written as local lmms-eval tasks (YAML + hooks) beside the data.

Standard library only: the pipeline reads TASKS when it plans a run, without importing the image generator.
"""
from __future__ import annotations

import shutil
from pathlib import Path

TASKS = ("colour", "count", "presence", "position")

TEMPLATE = """task: synth_{name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: generate_until
doc_to_visual: !function synth_utils.doc_to_visual
doc_to_text: !function synth_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
process_results: !function synth_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  description: "DualSpeed synthetic {name} questions (held out), scored by exact match"
"""


def write_tasks(root: Path, names) -> Path:
    out = root / "lmms_tasks"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).parent / "task_files" / "synth_utils.py", out / "synth_utils.py")
    for name in names:
        (out / f"synth_{name}.yaml").write_text(TEMPLATE.format(name=name, data_file=(root / f"eval_{name}.json").resolve()))
    return out
