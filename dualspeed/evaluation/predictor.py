"""Batched greedy inference on an exported checkpoint in an inference mode (normal, pruned, pruned_noiso)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .. import vtp
from ..data.conversation import IMAGE_TOKEN, build_prompt
from ..data.images import check_aspect, default_aspect, process_image, stack_images
from ..models import causal_mask
from ..models import clip_text as clip_lib
from ..models.checkpoint import load_exported, read_meta
from ..models.prune import Prune
from ..modes import INFERENCE_MODES, PDROP_MODE


def isolator_trained(meta: dict) -> bool:
    """Whether an export's last stage trained an isolator that pruned inference prepends; without one, pruned and
    pruned_noiso inference are the same computation."""
    fs = meta.get("fastslow", {})
    return bool(fs.get("isolator", True) and fs.get("prune", True))


def mode_plan(meta: dict, modes: list[str]) -> list[tuple[str, str | None]]:
    """(mode, the mode whose result it repeats, or None) in evaluation order: one evaluation where two modes
    are the same computation (pruned_noiso of a run that trained no isolator is its pruned inference)."""
    unknown = [m for m in modes if m not in INFERENCE_MODES]
    if unknown:
        raise ValueError(f"unknown inference mode(s) {unknown}; choose from {', '.join(INFERENCE_MODES)}")
    order = [m for m in INFERENCE_MODES if m in modes]
    reuse = not isolator_trained(meta) and "pruned" in order
    return [(m, "pruned" if (m == "pruned_noiso" and reuse) else None) for m in order]


def pdrop_settings(layers: str | None, lam: float | str | None) -> dict | None:
    """--pdrop-layers '1,2,3' (or '1:2:3', as lmms-eval's comma-separated model_args need) and --pdrop-lam ->
    the settings of PyramidDrop's inference on a checkpoint trained without it; None where not given."""
    if not layers:
        return None
    return {"layers": [int(x) for x in str(layers).replace(":", ",").split(",")],
            "lam": float(lam) if lam not in (None, "") else 0.5}


def pruning(meta: dict, method: str | None, ratio: float | None, where) -> tuple[str, float]:
    """The VTP method and p of pruned inference: the ones given, else the run's own. A run that never pruned has no
    p of its own (its p is 0: "pruned" would keep every token and equal normal inference), so it needs one given."""
    fs = meta.get("fastslow", {})
    if ratio is None:
        if not fs.get("prune", True) or not fs.get("ratio"):
            raise ValueError(f"{where} was trained without pruning, so it has no p of its own (0 would keep every "
                             "visual token: pruned inference would be normal inference); give the p to prune with "
                             "(--ratio, Predictor(ratio=...)), e.g. 0.9, and a method (--method, default divprune)")
        ratio = fs["ratio"]
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"--ratio {ratio}: p, the fraction of visual tokens pruned, must be in [0, 1)")
    return method or fs.get("method") or "divprune", float(ratio)


def crop_tokens(ckpt) -> int | None:
    """Visual tokens per crop of an export, from its config.json (no model loaded); None where it does not say."""
    try:
        vision = json.loads((Path(ckpt) / "config.json").read_text())["vision_config"]
        return (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
    except (OSError, KeyError, TypeError, ValueError):
        return None


def check_pruning(ckpt, modes: list[str], method: str | None, ratio: float | None) -> tuple[str, float] | None:
    """Before any model loads: the method and p pruned modes will run with, the method's options checked by its
    own spec against the tokens a crop keeps (vtp.check, as at plan time); None when no mode prunes."""
    if not any(INFERENCE_MODES.get(m, (False,))[0] for m in modes):
        return None
    if not (Path(ckpt) / "config.json").is_file():
        raise ValueError(f"no checkpoint at {ckpt} (expected an export: a finished run's hf/ dir with config.json)")
    method, ratio = pruning(read_meta(Path(ckpt)), method, ratio, ckpt)
    n = crop_tokens(ckpt)
    keep = {vtp.keep_count(n, ratio): f"p={ratio:g} of the {n} tokens per crop of {ckpt}"} if n else {}
    try:
        vtp.check(method, keep)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return method, ratio


@dataclass
class Query:
    question: str
    image: Image.Image | str | Path | None = None


class Predictor:
    def __init__(self, ckpt: str | Path, mode: str = "normal", method: str | None = None, ratio: float | None = None,
                 batch_size: int = 16, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 16,
                 seed: int = 0, clip_text: str = "auto", pdrop: dict | None = None):
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown inference mode '{mode}'; choose one of {', '.join(INFERENCE_MODES)}")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        chosen = check_pruning(ckpt, [mode], method, ratio)  # before the checkpoint loads
        causal_mask.install()
        self.model, self.tokenizer, self.processor, self.meta = load_exported(ckpt, torch_dtype, device)
        fs = self.meta.get("fastslow", {})
        # images are preprocessed as the checkpoint's last stage trained on them (LLaVA-1.5: padded to a
        # square); an export without that record gets LLaVA's own choice for its processor
        self.image_aspect_ratio = (self.meta.get("data", {}).get("image_aspect_ratio")
                                   or default_aspect(self.processor))
        check_aspect(self.processor, self.image_aspect_ratio)
        do_prune, use_isolator = INFERENCE_MODES[mode]
        # "pruned" adds the isolator only where the run trained one: an untrained prompt is noise
        self.isolator = use_isolator and isolator_trained(self.meta)
        self.prune = None
        if do_prune:
            method, ratio = chosen  # the arguments, else what the run was trained with (check_pruning)
            self.prune = Prune(method, ratio, seed=seed)
            # the relevance signal from the CLIP text tower the export carries (auto), if its method reads it
            where = clip_lib.for_checkpoint(ckpt, clip_text) if "relevance" in self.prune.signals else None
            if where:
                self.model.attach_clip_text(clip_lib.ClipText.load(where, torch_dtype), self.tokenizer)
        if mode == PDROP_MODE:  # the checkpoint's own settings, else those given (training-free use)
            how = self.meta.get("pdrop") or pdrop
            if not how:
                raise ValueError(f"{ckpt} was not trained with PyramidDrop: pass its settings (--pdrop-layers, "
                                 "--pdrop-lam) to run the pdrop inference mode on it")
            self.model.enable_pdrop(how["layers"], how["lam"])
        self.mode, self.batch_size, self.device, self.dtype = mode, batch_size, device, torch_dtype
        self.max_new_tokens = max_new_tokens
        self.stats = {"samples": 0, "seconds": 0.0, "visual_tokens": 0, "images": 0}

    def _encode(self, q: Query):
        text = (IMAGE_TOKEN + "\n" if q.image is not None else "") + q.question
        conv = [{"from": "human", "value": text}, {"from": "gpt", "value": ""}]
        ids, _ = build_prompt(self.tokenizer, conv, "vicuna_v1", for_generation=True)
        pix = None
        if q.image is not None:
            im = q.image if isinstance(q.image, Image.Image) else Image.open(q.image)
            pix = process_image(im, self.processor, self.image_aspect_ratio)
        return ids, pix

    def _images(self, pix: list[dict]) -> dict:
        images = stack_images(pix)
        return {k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device))
                for k, v in images.items() if v is not None}

    @torch.no_grad()
    def predict(self, queries: list[Query], progress=None) -> list[str]:
        answers: list[str] = []
        for start in range(0, len(queries), self.batch_size):
            batch = [self._encode(q) for q in queries[start:start + self.batch_size]]
            t0 = time.perf_counter()
            n = max(len(ids) for ids, _ in batch)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (n - len(ids)) + ids for ids, _ in batch], device=self.device)
            mask = torch.tensor([[0] * (n - len(ids)) + [1] * len(ids) for ids, _ in batch], device=self.device)
            has_image = torch.tensor([p is not None for _, p in batch], device=self.device)
            pix = [p for _, p in batch if p is not None]
            out, n_visual = self.model.generate(input_ids, mask, has_image=has_image, **self._images(pix),
                                                prune=self.prune, isolator=self.isolator,
                                                max_new_tokens=self.max_new_tokens,
                                                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad)
            answers += [self.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["samples"] += len(batch)
            self.stats["images"] += len(pix)
            self.stats["visual_tokens"] += n_visual
            if progress is not None:
                progress.update(len(batch))
        return answers

    @torch.no_grad()
    def score(self, q: Query, continuation: str) -> tuple[float, bool]:
        """(negative log-likelihood of `continuation` after the prompt, whether greedy decoding gives it).

        Returned as a positive loss because lmms-eval 0.7.3 picks multiple-choice answers by argmin.
        """
        ids, pix = self._encode(q)
        cont = self.tokenizer(continuation, add_special_tokens=False).input_ids
        if not cont:
            raise ValueError(f"empty continuation {continuation!r} cannot be scored")
        input_ids = torch.tensor([ids + cont], device=self.device)
        labels = torch.tensor([[-100] * len(ids) + cont], device=self.device)
        has_image = torch.tensor([pix is not None], device=self.device)
        images = self._images([pix] if pix is not None else [])
        out = self.model(input_ids, torch.ones_like(input_ids), labels, has_image=has_image, **images,
                         prune=self.prune, isolator=self.isolator)
        logp = torch.log_softmax(out.answer_logits.float(), dim=-1)
        nll = -logp.gather(1, out.targets[:, None]).sum()
        greedy = bool((out.answer_logits.argmax(-1) == out.targets).all())
        return float(nll), greedy

    def summary(self) -> dict:
        s = self.stats
        return {"samples": s["samples"], "samples_per_s": s["samples"] / s["seconds"] if s["seconds"] else None,
                "visual_tokens_per_sample": s["visual_tokens"] / s["images"] if s["images"] else 0.0,
                "mode": self.mode, "pdrop": self.model.pdrop.meta() if self.model.pdrop else None,
                "vtp_method": self.prune.method if self.prune else None,
                "prune_ratio": self.prune.ratio if self.prune else None, "isolator": self.isolator,
                "vtp": self.prune.plugin.provenance(self.model.signal_sources(self.prune.signals))
                if self.prune else None}
