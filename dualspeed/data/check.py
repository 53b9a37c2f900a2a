"""The pre-run data check: every conversation validated, every image opened and fully decoded.

    python -m dualspeed.data check --json FILE --image-folder DIR [--workers N]

Real LLaVA data sets hold truncated, empty and mislabelled image files; found by the training loop,
each one stops a run hours in, and again after every restart. This check runs first in every
training job (and by hand before a cluster job): images are decoded in parallel with a progress bar,
and each verdict is cached by file size and mtime, so a second check of the same folder only stats
the files. Bad samples are listed one line each, naming the sample and the file; `data.bad_images`
chooses between failing (the default) and dropping them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..provenance import write_json
from .samples import DataError, read_rows, sample_problem

SKIPPED_FILE = "skipped_samples.json"
MAX_LISTED = 50  # lines of an error message; the full list goes to the run dir


@dataclass
class Problem:
    index: int
    sample_id: str
    reason: str
    file: str | None = None

    def line(self) -> str:
        where = f" [{self.file}]" if self.file else ""
        return f"sample #{self.index} (id={self.sample_id}): {self.reason}{where}"


def image_problem(path: str) -> str | None:
    """Why the file at `path` is not a usable image, or None. Runs in worker processes."""
    try:
        if os.path.getsize(path) == 0:
            return "empty image file (0 bytes)"
    except OSError:
        return "image file not found"
    try:
        with Image.open(path) as im:
            im.verify()  # header and structure (PNG chunk checksums)
        with Image.open(path) as im:  # verify() leaves the image unusable: reopen for a full decode
            im.load()  # a truncated file fails only here
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the file)"
    except Exception as e:  # noqa: BLE001 - any decoder error means the sample cannot be trained on
        return f"image cannot be decoded ({type(e).__name__}: {e})"
    return None


def default_cache(image_folder: Path) -> Path:
    root = Path(os.environ.get("DUALSPEED_CACHE", Path.home() / ".cache" / "dualspeed"))
    key = hashlib.sha256(str(Path(image_folder).resolve()).encode()).hexdigest()[:16]
    return root / "image_check" / f"{key}.json"


def _read_cache(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only costs a re-check


def check_images(paths: list[str], workers: int | None = None, cache_file: Path | None = None,
                 progress: bool = True) -> dict[str, str | None]:
    """Verdict per path (None = fine). Only files whose size or mtime changed since the cached
    verdict are decoded again."""
    cache = _read_cache(cache_file)
    verdict: dict[str, str | None] = {}
    todo, stamps = [], {}
    for p in dict.fromkeys(paths):
        try:
            st = os.stat(p)
        except OSError:
            verdict[p] = "image file not found"
            continue
        stamps[p] = [st.st_size, st.st_mtime_ns]
        hit = cache.get(p)
        if hit is not None and hit[:2] == stamps[p]:
            verdict[p] = hit[2]
        else:
            todo.append(p)
    workers = workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=len(todo), desc="checking images", unit="img", disable=not progress or not todo)
    if workers > 1 and len(todo) > 256:
        # fork: the workers need only PIL, and nothing heavy is initialised before the check runs
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as ex:
            for p, v in zip(todo, ex.map(image_problem, todo, chunksize=64)):
                verdict[p] = v
                bar.update()
    else:
        for p in todo:
            verdict[p] = image_problem(p)
            bar.update()
    bar.close()
    if todo and cache_file is not None:
        cache.update({p: [*stamps[p], verdict[p]] for p in todo})
        write_json(cache_file, cache, indent=None)  # atomic: concurrent jobs may share one cache
    return verdict


def check_data(json_path, image_folder, workers: int | None = None, cache_file: Path | None | bool = True,
               progress: bool = True) -> tuple[list, list[Problem]]:
    """-> (rows, problems): every sample of `json_path`, and one Problem per bad sample."""
    rows, folder = read_rows(json_path), Path(image_folder)
    if not rows:
        raise DataError(f"{json_path} holds no samples (an empty list): there is nothing to train on")
    with_image = sum(1 for s in rows if isinstance(s, dict) and "image" in s)
    if with_image and not folder.is_dir():  # one line, not one 'not found' per sample
        raise DataError(f"image folder {folder} does not exist ({with_image} of {len(rows)} samples of {json_path} "
                        "name an image in it); give the folder their image paths are relative to")
    problems: dict[int, Problem] = {}
    images: dict[int, str] = {}
    for i, s in enumerate(rows):
        sid = str(s.get("id", "?")) if isinstance(s, dict) else "?"
        why = sample_problem(s, folder)
        if why:
            problems[i] = Problem(i, sid, why, s.get("image") if isinstance(s, dict) else None)
        elif "image" in s:
            images[i] = os.path.join(folder, s["image"])
    if cache_file is True:
        cache_file = default_cache(folder)
    verdict = check_images(list(images.values()), workers, cache_file or None, progress)
    for i, path in images.items():
        if verdict[path]:
            problems[i] = Problem(i, str(rows[i].get("id", "?")), verdict[path], path)
    return rows, [problems[i] for i in sorted(problems)]


def checked_rows(data_cfg, out_dir: Path, progress: bool = True) -> tuple[list, int]:
    """The training job's data check: -> (the samples to train on, how many were skipped).

    bad_images=fail raises with one line per bad sample; skip drops them and lists them in the run dir."""
    try:
        rows, problems = check_data(data_cfg.json, data_cfg.image_folder, progress=progress)
    except DataError as e:
        raise DataError(f"config key 'data.json': {e}") from None
    if not problems:
        return rows, 0
    lines = [p.line() for p in problems]
    if data_cfg.bad_images == "skip" and len(problems) == len(rows):
        raise DataError(f"config key 'data.json' ({data_cfg.json}): all {len(rows)} samples are unusable, so "
                        "data.bad_images: skip leaves nothing to train on; the first:\n" + "\n".join(lines[:5]))
    if data_cfg.bad_images == "skip":
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / SKIPPED_FILE).write_text(json.dumps([p.__dict__ for p in problems], indent=2))
        print(f"[data] skipping {len(problems)} of {len(rows)} samples of {data_cfg.json} "
              f"(data.bad_images: skip); listed in {out_dir / SKIPPED_FILE}", file=sys.stderr)
        bad = {p.index for p in problems}
        return [s for i, s in enumerate(rows) if i not in bad], len(problems)
    more = f"\n... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    raise DataError(f"{data_cfg.json}: {len(problems)} of {len(rows)} samples are unusable:\n"
                    + "\n".join(lines[:MAX_LISTED]) + more
                    + "\nFix or remove them, or set data.bad_images: skip to train without them.")


def add_arguments(c) -> None:
    c.add_argument("--json", required=True, help="LLaVA-format data JSON")
    c.add_argument("--image-folder", required=True, help="the folder image paths are relative to")
    c.add_argument("--workers", type=int, default=None, help="decoding processes (default: every core available)")
    c.add_argument("--cache", default=None, help="verdict cache file (default: under $DUALSPEED_CACHE or ~/.cache)")
    c.add_argument("--no-cache", action="store_true", help="decode every image, read and write no cache")


def command(a) -> int:
    try:
        cache = False if a.no_cache else (Path(a.cache) if a.cache else True)
        rows, problems = check_data(a.json, a.image_folder, a.workers, cache)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{a.json}: {p.line()}")
    n_img = sum(1 for s in rows if isinstance(s, dict) and "image" in s)
    print(f"[data] {len(rows)} samples ({n_img} with an image): {len(problems)} bad", file=sys.stderr)
    return 1 if problems else 0
