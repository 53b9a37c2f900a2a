"""The FLOPs of the training steps a run takes, from each batch's own token counts (the analytic model of
dualspeed/models/flops.py): what steps.csv and timing.json record per step and per training mode."""
from __future__ import annotations

from ..models.flops import Sample, Setup, Shape, train_step
from ..modes import FAST, FULL, SLOW


def samples(inputs: dict, crops: list[int], visual: list[int]) -> list[Sample]:
    """A collated batch -> its samples: crops and full-mode visual tokens of each image sample, in order."""
    mask, labels, has_image = inputs["attention_mask"], inputs["labels"], inputs["has_image"]
    out, img = [], 0
    for b in range(mask.shape[0]):
        text = int(mask[b].sum()) - int(bool(has_image[b]))  # the placeholder is replaced
        answer = int((labels[b, 1:] != -100).sum())
        sup = (labels[b] != -100).long()
        spans = int((sup[1:] > sup[:-1]).sum())  # supervised spans (PyramidDrop ranks with the token before each)
        if bool(has_image[b]):
            out.append(Sample(text, visual[img], crops[img], answer, spans))
            img += 1
        else:
            out.append(Sample(text, answer=answer, spans=spans))
    return out


class StepCounter:
    """The FLOPs of the training steps a run actually takes, from each batch's own token counts."""

    def __init__(self, model, cfg):
        t, fs = cfg.train, cfg.fastslow
        self.shape = Shape.from_hf(model.config)
        eager = getattr(model.config.text_config, "_attn_implementation", "sdpa") == "eager"
        self.setup = Setup(llm=t.llm, lora_r=t.lora.r, lora_targets=tuple(t.lora.target_modules),
                           checkpointing=t.gradient_checkpointing, train_vision=t.train_vision_tower,
                           attn="eager" if eager else "sdpa", prune_method=fs.method)
        self.p, self.iso, self.distill = fs.ratio, fs.isolator_len if fs.isolator else 0, fs.distill
        self.ratios = model.pmod.ratios if model.pmod is not None else None
        self.pdrop = model.pdrop.meta() if model.pdrop is not None else None

    def step(self, model, inputs: dict, mode: str, full_visual: int) -> float:
        """mode: the trainer's (full, fast, slow); full_visual: visual tokens of the batch's full-sequence
        forward (full and slow steps; LLaVA-NeXT images are split among images by their crops)."""
        pv = inputs.get("pixel_values")
        n_img = int(inputs["has_image"].sum())
        crops = model.crops_per_image(pv, inputs.get("image_sizes")) if (pv is not None and n_img) else []
        if mode == FAST or not crops:
            visual = [c * self.shape.patches for c in crops]
        else:
            visual = [round(full_visual * c / sum(crops)) for c in crops]
        # the step kind this training mode runs as
        full = "pmod" if self.ratios else ("pdrop" if self.pdrop else "full")
        m = {FULL: full, FAST: "fast_isolator" if self.iso else "fast", SLOW: "slow"}[mode]
        return train_step(self.shape, self.setup, samples(inputs, crops, visual), m, self.p, self.iso, self.ratios,
                          self.distill, pdrop=self.pdrop).total
