"""Checkpoints: trainable-only intermediate checkpoints (resume) and the exported llava-hf directory
(LoRA merged) with what lies outside the llava-hf layout (isolator, p-MoD routers) beside it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.conversation import prepare_tokenizer
from . import clip_text
from .tokenizer import load_tokenizer
from .build import _load_llava
from .hf_files import mark_pmod, processor_for_export
from .llava import DualSpeedLlava

EXTRA_FILE = "dualspeed_extra.safetensors"  # isolator (and anything else outside the llava-hf layout)
META_FILE = "dualspeed.json"


def trainable_state(model: nn.Module, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    sd = state_dict if state_dict is not None else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if k in names}


def save_trainable(model: nn.Module, out_dir: str | Path, meta: dict, state_dict: dict | None = None) -> None:
    """An intermediate checkpoint: every trainable tensor (projector, isolator, LoRA, ...) + metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model, state_dict), out / "trainable.safetensors")
    (out / META_FILE).write_text(json.dumps(meta, indent=2))


def load_trainable(model: nn.Module, ckpt_dir: str | Path) -> None:
    path = Path(ckpt_dir) / "trainable.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir} has no trainable.safetensors")
    sd = load_file(path)
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = expected - sd.keys()
    if missing:
        raise RuntimeError(f"checkpoint {ckpt_dir} lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
    unexpected = model.load_state_dict(sd, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir} has tensors this model does not: {unexpected[:3]}")


def export_hf(model: DualSpeedLlava, tokenizer, processor, out_dir: str | Path, meta: dict,
              clip_from: str | None = None) -> None:
    """Write a plain llava-hf directory (LoRA merged, with the full processor and chat template that
    AutoProcessor and lmms-eval expect) plus the isolator beside it; a p-MoD export is marked as such.
    clip_from: the run's CLIP text tower (models/clip_text.py), written into clip_text/ so that later stages
    and the offline evaluation find it in the checkpoint.

    Written into a sibling temp dir and renamed into place, so a job killed mid-export never leaves a
    directory that a later stage or evaluation would read as finished."""
    from peft import PeftModel

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lm = model.llava.model.language_model
    if isinstance(lm, PeftModel):
        model.llava.model.language_model = lm.merge_and_unload()
    model.llava.save_pretrained(tmp, safe_serialization=True)
    prepare_tokenizer(tokenizer)
    processor_for_export(model.llava, tokenizer, processor).save_pretrained(tmp)  # tokenizer and image processor too
    extra = {"isolator.prompt": model.isolator.prompt.detach().cpu().contiguous()}
    if model.pdrop is not None:  # no weights: the export is dense llava-hf; its dropping inference reads these
        meta = {**meta, "pdrop": model.pdrop.meta()}
    if model.pmod is not None:
        extra.update({f"pmod.{k}": v.detach().cpu().contiguous() for k, v in model.pmod.state_dict().items()})
        meta = {**meta, "pmod": model.pmod.meta()}
    save_file(extra, tmp / EXTRA_FILE)
    if model.pmod is not None:
        mark_pmod(tmp)
    if clip_from:
        clip_text.export(clip_from, tmp / clip_text.CLIP_DIR, model.clip_text, model.llava.lm_head.weight.dtype)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def read_meta(path: Path) -> dict:
    """An export's dualspeed.json ({} for a plain llava-hf checkpoint)."""
    return json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}


def pmod_state(extra: dict) -> dict:
    """The p-MoD routers' state dict inside an extras file."""
    return {k[len("pmod."):]: v for k, v in extra.items() if k.startswith("pmod.")}


def trained_extras(meta: dict) -> list[str]:
    """Which extras of an export hold trained values (the rest are a fresh, unused init)."""
    if "trained_extras" in meta:
        return list(meta["trained_extras"])
    # exports written before the list existed: the isolator trained iff that stage pruned with it
    fs = meta.get("fastslow", {})
    return (["isolator"] if fs.get("prune") and fs.get("isolator") else []) + (["pmod"] if "pmod" in meta else [])


def carry_extras(model: DualSpeedLlava, path: str | Path) -> list[str]:
    """Load what the stage that exported `path` trained outside the llava-hf layout (the isolator,
    p-MoD routers) into `model`, so the next stage continues from it instead of a fresh init.
    Returns the names carried."""
    path = Path(path)
    if not (path / EXTRA_FILE).is_file():
        return []
    extra = load_file(path / EXTRA_FILE)
    carried = []
    trained = trained_extras(read_meta(path))
    if "isolator" in trained:
        prompt, mine = extra["isolator.prompt"], model.isolator.prompt
        if prompt.shape != mine.shape:
            raise ValueError(f"{path} trained a {prompt.shape[0]}-token isolator but this run builds "
                             f"{mine.shape[0]} tokens; set fastslow.isolator_len: {prompt.shape[0]} to continue from it")
        with torch.no_grad():
            mine.copy_(prompt.to(mine.dtype))
        carried.append("isolator")
    if "pmod" in trained:
        if model.pmod is None:
            raise ValueError(f"{path} was trained with p-MoD layers: its LLM expects routed layers. Enable pmod "
                             "in this stage's config to continue from it")
        model.pmod.load_state_dict(pmod_state(extra))
        carried.append("pmod")
    return carried


def load_exported(path: str | Path, dtype=torch.float32, device="cpu"):
    """Load an exported checkpoint for inference -> (DualSpeedLlava, tokenizer, processor, meta)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not an exported checkpoint (no config.json); did training finish?")
    meta = read_meta(path)
    llava, processor = _load_llava(path, dtype)
    iso_len = int(meta.get("isolator_len", 4))
    model = DualSpeedLlava(llava, iso_len)
    if (path / EXTRA_FILE).is_file():
        extra = load_file(path / EXTRA_FILE)
        model.isolator.prompt.data.copy_(extra["isolator.prompt"])
        if "pmod" in meta:
            pm = meta["pmod"]
            model.enable_pmod(ratios=pm["ratios"], alpha=pm["alpha"], beta=pm["beta"])
            model.pmod.load_state_dict(pmod_state(extra))
    model.to(device=device, dtype=dtype).eval()
    return model, load_tokenizer(path), processor, meta
