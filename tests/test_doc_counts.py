"""Every job count the README and docs/ quote is a dry run's, checked here against `snakemake -n --forceall`.

A count is written with an HTML comment (invisible once rendered) naming the dry run that gives it; the count is
the last number before the comment on its line:

    **63 jobs**<!-- jobs: -->                                      every job of the default (the dry run's total)
    76 jobs<!-- jobs: --configfile config/llava15_7b.yaml -->        the same, of another config
    24 jobs<!-- jobs: results/smoke-next/tables/main.md --configfile config/smoke.yaml config/smoke_next.yaml -->
    19 SFT trainings<!-- jobs sft: -->                             the jobs of one rule
    31 SFT<!-- jobs sft new: --configfile config/full.yaml -->       those whose outputs the default does not plan

Every "N jobs" of README.md and docs/*.md must carry such a comment, so no count goes stale unseen. The dry runs run
in a copy of the workflow with the digits of tests/digits_data.py in own_data/ (config/smoke_own.yaml reads them).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest

from digits_data import build

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs/reference/: committed outputs, not prose
MARK = re.compile(r"<!-- jobs(?: (\w+))?( new)?: ?(.*?) ?-->")
COUNT = re.compile(r"(\d[\d,]*)")


def quoted_counts() -> list[tuple[str, int, str | None, bool, str]]:
    """(where, count, rule or None for the total, new-over-the-default?, the dry run's arguments)."""
    out = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for m in MARK.finditer(line):
                before = COUNT.findall(MARK.sub("", line[:m.start()]))
                assert before, f"{doc.name}:{n}: a jobs comment with no count before it"
                out.append((f"{doc.relative_to(ROOT)}:{n}", int(before[-1].replace(",", "")), m.group(1),
                            bool(m.group(2)), m.group(3)))
    return out


def test_every_quoted_job_count_names_its_dry_run():
    unmarked = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for m in re.finditer(r"\b\d[\d,]* jobs\b(?!\**<!-- jobs)", line):
                unmarked.append(f"{doc.relative_to(ROOT)}:{n}: {m.group(0)}")
    assert unmarked == [], "job counts without a <!-- jobs: ... --> comment naming their dry run"
    assert len(quoted_counts()) >= 8  # the README's and docs' counts are all under test


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import shutil

    work = tmp_path_factory.mktemp("doc_counts")
    for item in ("Snakefile", "workflow", "config", "environment.yml"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    build(work / "own_data", n_pretrain=20, n_sft=20, n_eval=4)
    return work


@lru_cache(maxsize=None)
def plan(work: Path, args: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job the dry run plans."""
    res = subprocess.run([sys.executable, "-m", "snakemake", *shlex.split(args), "-n", "--forceall", "--cores", "2"],
                         cwd=work, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"snakemake -n {args}:\n{res.stderr[-3000:]}"
    jobs: list[list] = []
    for line in res.stdout.splitlines():
        if m := re.match(r"^\s*(?:local)?rule (\w+):$", line):
            jobs.append([m.group(1), None])
        elif (m := re.match(r"^\s+output: (.*)$", line)) and jobs and jobs[-1][1] is None:
            jobs[-1][1] = m.group(1)
    stats = res.stdout.split("Job stats:")[1]
    total = int(re.search(r"^total\s+(\d+)$", stats, re.M).group(1))
    assert len(jobs) == total, (len(jobs), total)  # every planned job was read
    return [tuple(j) for j in jobs]


def dry_count(work: Path, rule: str | None, new: bool, args: str) -> int:
    jobs = plan(work, args)
    if new:
        default = {out for _, out in plan(work, "")}
        jobs = [j for j in jobs if j[1] not in default]
    return sum(1 for r, _ in jobs if rule is None or r == rule)


def test_every_quoted_job_count_is_the_dry_runs(work):
    wrong = []
    for where, count, rule, new, args in quoted_counts():
        got = dry_count(work, rule, new, args)
        if got != count:
            wrong.append(f"{where}: says {count}, `snakemake -n --forceall {args}` plans {got}"
                         + (f" {rule} jobs" if rule else " jobs") + (" not in the default's plan" if new else ""))
    assert wrong == []
    assert Counter(r for r, _ in plan(work, ""))["sft"] == 24  # the parser reads the plan as test_pipeline counts it
