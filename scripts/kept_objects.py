"""Usage: python scripts/kept_objects.py <synthetic data root> <method> <run>/hf [<run>/hf ...] [--n N] [--json OUT]

Which patches a VTP method keeps, given a checkpoint's projector: of the objects in each held-out image (count
task, the first N), the share with at least one kept patch, and the share of kept patches that lie on an object.
A selection method (DivPrune, random) reads the projected features, so two checkpoints of the same tower can keep
different patches: this tells a projector that lets the method find the objects from one that does not.
An object patch is one whose mean colour is far from the grey background (the scenes' objects fill whole
patches: dualspeed/data/scenes.py); each quadrant holds at most one object."""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualspeed import vtp
from dualspeed.data.scenes import BACKGROUND
from dualspeed.models.checkpoint import load_exported

FAR = 0.15  # how far from the background's grey an object patch's mean colour is (the scenes' colours: 0.27 or more)


def object_patches(img: Image.Image, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(is an object patch [side*side], quadrant of each patch [side*side]) in raster order, as the tower's tokens."""
    a = np.asarray(img, dtype=np.float32) / 255
    p = a.shape[0] // side
    means = a.reshape(side, p, side, p, 3).mean((1, 3))
    half = side // 2
    quad = np.array([(r // half) * 2 + c // half for r in range(side) for c in range(side)])
    return (np.abs(means - BACKGROUND).max(-1) > FAR).reshape(-1), quad


def measure(ckpt: str, method: str, images: list[Image.Image], p: float) -> dict:
    model, _, processor, _ = load_exported(ckpt)
    plugin = vtp.get(method)
    if plugin.required_signals():
        raise SystemExit(f"{method} reads side signals ({', '.join(plugin.required_signals())}); this script "
                         "measures methods that see only the projected features")
    with torch.no_grad():
        feats = model.encode_images(processor(images, return_tensors="pt")["pixel_values"])
        kept = plugin.reduce(feats, vtp.keep_count(feats.shape[1], p), None).index
    side = int(feats.shape[1] ** 0.5)
    covered, on = [], []
    for img, idx in zip(images, kept.tolist()):
        obj, quad = object_patches(img, side)
        present = set(quad[obj].tolist())
        covered.append(len({quad[k] for k in idx if obj[k]}) / len(present))
        on.append(float(np.mean([obj[k] for k in idx])))
    return {"objects with a kept patch %": round(100 * float(np.mean(covered)), 1),
            "kept patches on an object %": round(100 * float(np.mean(on)), 1), "images": len(images)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("data", type=Path)
    ap.add_argument("method")
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = json.loads((a.data / "eval_count.json").read_text())[:a.n]
    images = [Image.open(a.data / r["image"]).convert("RGB") for r in rows]
    out = {}
    for ckpt in a.ckpts:
        out[ckpt] = measure(ckpt, a.method, images, a.p)
        print(ckpt, out[ckpt], flush=True)
    if a.json:
        a.json.write_text(json.dumps({"method": a.method, "p": a.p, "runs": out}, indent=1) + "\n")


if __name__ == "__main__":
    main()
