"""One training loop for every variant: baseline, NaivePrune, DualSpeed and the ablations.

    python -m dualspeed.train --config run.yaml [--set train.lr=1e-3 ...]

A variant is only a setting of `fastslow`: prune=false is the baseline; prune with slow_prob=0 and
isolator=false is NaivePrune; slow_prob>0 adds fast-slow, isolator adds the mode isolator,
distill adds self-distillation in slow steps. `pmod.enabled` (with prune=false) is the p-MoD
comparison row: the same loop with Mixture-of-Depths layers in the LLM.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from . import provenance
from .config import RunConfig, dump_config, load_config
from .data import Collator, LlavaDataset
from .fastslow import FAST, FULL, SLOW, ModeSchedule, mode_loss
from .build import load_components, reinit_projector
from .checkpoint import export_hf, load_trainable, save_trainable
from .model import DualSpeedLlava, Prune

log = logging.getLogger("dualspeed.train")


def set_trainable(model: DualSpeedLlava, cfg: RunConfig) -> dict[str, int]:
    """Freeze/unfreeze by stage in one place; returns trainable parameter counts per part."""
    from peft import LoraConfig, get_peft_model

    t, fs = cfg.train, cfg.fastslow
    model.requires_grad_(False)
    if t.llm == "lora":
        lcfg = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                          target_modules=list(t.lora.target_modules), bias="none")
        model.llava.model.language_model = get_peft_model(model.llava.model.language_model, lcfg)
    elif t.llm == "full":
        model.language_model.requires_grad_(True)
        model.llava.lm_head.requires_grad_(True)
    model.llava.model.multi_modal_projector.requires_grad_(True)
    if model.anyres:  # LLaVA-NeXT's row separator belongs to the connector: it trains with the projector
        model.llava.model.image_newline.requires_grad_(True)
    model.isolator.requires_grad_(fs.prune and fs.isolator)
    if model.pmod is not None:  # the routers train with the LLM's learning rate, frozen or not
        model.pmod.requires_grad_(True)
    model.train_vision = t.train_vision_tower
    model.llava.model.vision_tower.requires_grad_(t.train_vision_tower)
    parts = {"vision_tower": model.llava.model.vision_tower, "projector": model.llava.model.multi_modal_projector,
             "isolator": model.isolator, "language_model": model.language_model, "lm_head": model.llava.lm_head,
             "pmod_routers": model.pmod if model.pmod is not None else torch.nn.Identity()}
    counts = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in parts.items()}
    log.info("trainable parameters: %s", ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return counts


class StepLog(TrainerCallback):
    """Per-step CSV: mode, teacher/student CE, KL, loss, tokens, step time, LR."""

    FIELDS = ["step", "mode", "loss", "teacher_ce", "student_ce", "kl", "visual_tokens", "text_tokens", "step_time_s", "lr"]

    def __init__(self, trainer: "DualSpeedTrainer", path: Path):
        self.trainer, self.path = trainer, path
        self.t0 = None

    def on_train_begin(self, args, state, control, **kw):
        if state.is_world_process_zero and (not self.path.exists() or state.global_step == 0):
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)

    def on_step_begin(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        s = self.trainer.pop_step_stats()
        self.trainer.totals["step_time_s"] += dt
        if not state.is_world_process_zero:
            return
        lr = self.trainer.lr_scheduler.get_last_lr()[0] if self.trainer.lr_scheduler else float("nan")
        row = [state.global_step, s["mode"], s["loss"], s["teacher_ce"], s["student_ce"], s["kl"],
               s["visual_tokens"], s["text_tokens"], round(dt, 5), lr]
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(row)


class DualSpeedTrainer(Trainer):
    def __init__(self, *args, run_cfg: RunConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_cfg = run_cfg
        fs = run_cfg.fastslow
        self.prune = Prune(fs.method, fs.ratio) if fs.prune else None
        self.schedule = ModeSchedule(fs.slow_prob if fs.prune else 0.0, run_cfg.train.seed)
        self.totals = {"visual_tokens": 0, "text_tokens": 0, "samples": 0, "step_time_s": 0.0, FAST: 0, SLOW: 0, FULL: 0}
        self._stats = self._empty_stats()

    @staticmethod
    def _empty_stats():
        return {"mode": "", "loss": 0.0, "teacher_ce": math.nan, "student_ce": math.nan, "kl": math.nan,
                "visual_tokens": 0, "text_tokens": 0, "n": 0}

    def pop_step_stats(self) -> dict:
        s = self._stats
        if s["n"]:
            for k in ("loss", "teacher_ce", "student_ce", "kl"):
                s[k] = round(s[k] / s["n"], 6)
        self.totals[s["mode"] or FULL] += 1
        self._stats = self._empty_stats()
        return s

    def _record(self, mode, loss, inputs, visual_tokens, teacher_ce=None, student_ce=None, kl=None):
        s = self._stats
        s["mode"] = mode
        s["n"] += 1
        s["loss"] += float(loss)
        for k, v in (("teacher_ce", teacher_ce), ("student_ce", student_ce), ("kl", kl)):
            if v is not None:
                s[k] = (0.0 if math.isnan(s[k]) else s[k]) + float(v)
        text = int(inputs["attention_mask"].sum()) - int(inputs["has_image"].sum())  # placeholders are replaced
        s["visual_tokens"] += visual_tokens
        s["text_tokens"] += text
        self.totals["visual_tokens"] += visual_tokens
        self.totals["text_tokens"] += text
        self.totals["samples"] += inputs["input_ids"].shape[0]

    def current_mode(self) -> str:
        if self.prune is None:
            return FULL
        # One mode per optimizer step: every micro-batch and every rank agree, and a resumed run
        # replays the same sequence because the step counter is restored from the checkpoint.
        return self.schedule.mode(self.state.global_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fs = self.run_cfg.fastslow
        mode = self.current_mode()
        r = mode_loss(model, inputs, mode, self.prune, fs.isolator, fs.distill, fs.tau, fs.lam,
                      teacher_model=self.accelerator.unwrap_model(model))
        self._record(mode, r.loss.detach(), inputs, r.visual_tokens, teacher_ce=r.teacher_ce,
                     student_ce=r.student_ce, kl=r.kl)
        return (r.loss, r.out) if return_outputs else r.loss

    def create_optimizer(self):
        if self.optimizer is not None:
            return self.optimizer
        t = self.run_cfg.train
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        groups: dict[str, dict] = {}

        def lr_for(name: str) -> tuple[str, float]:
            if "multi_modal_projector" in name or "image_newline" in name:
                return "projector", t.projector_lr
            if name.startswith("isolator"):
                return "isolator", t.isolator_lr
            if "vision_tower" in name:
                return "vision", t.vision_lr
            return "llm", t.lr

        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            part, lr = lr_for(name)
            decay = t.weight_decay if (p.dim() >= 2 and part != "isolator") else 0.0
            g = groups.setdefault(f"{part}/{decay}", {"params": [], "lr": lr, "weight_decay": decay, "name": part})
            g["params"].append(p)
        self.optimizer = torch.optim.AdamW(list(groups.values()), betas=(0.9, 0.999), eps=1e-8)
        log.info("optimizer groups: %s", {k: (len(g["params"]), g["lr"]) for k, g in groups.items()})
        return self.optimizer

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        meta = {"stage": self.run_cfg.train.stage, "isolator_len": self.run_cfg.fastslow.isolator_len,
                "global_step": self.state.global_step}
        save_trainable(model, output_dir, meta, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_trainable(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


def training_args(cfg: RunConfig, out: Path) -> TrainingArguments:
    t = cfg.train
    cuda = torch.cuda.is_available()
    uses_unused = cfg.fastslow.prune and cfg.fastslow.isolator and cfg.fastslow.slow_prob > 0
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr, weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio, lr_scheduler_type=t.scheduler, num_train_epochs=t.epochs, max_steps=t.max_steps,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, bf16=t.bf16 and cuda, tf32=(t.tf32 and cuda) or None,
        deepspeed=t.deepspeed or None, seed=t.seed, data_seed=t.seed, report_to=[], remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_workers, use_cpu=not cuda, save_safetensors=False,
        # slow steps leave the isolator out of the graph; DDP must be told that can happen
        ddp_find_unused_parameters=uses_unused, logging_dir=str(out / "tb"),
        disable_tqdm=False,
    )


def run(cfg: RunConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    dtype = torch.bfloat16 if (t.bf16 and torch.cuda.is_available()) else torch.float32
    llava, tokenizer, processor = load_components(cfg.model, dtype=dtype, seed=t.seed)
    # Data is validated before the model is touched further, so bad samples fail fast.
    dataset = LlavaDataset(cfg.data.json, cfg.data.image_folder, tokenizer, processor, cfg.data.template,
                           cfg.data.max_length)
    if cfg.model.reinit_projector:
        reinit_projector(llava, t.seed)
    model = DualSpeedLlava(llava, cfg.fastslow.isolator_len)
    if cfg.pmod.enabled:
        pm = cfg.pmod
        log.info("p-MoD ratios per layer: %s", model.enable_pmod(pm.dense_above, pm.floor, pm.alpha, pm.beta).ratios)
    counts = set_trainable(model, cfg)
    if t.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    args = training_args(cfg, out)
    if args.process_index == 0:
        dump_config(cfg, out / "config.resolved.yaml")
        provenance.write(out, {"trainable_parameters": counts, "samples": len(dataset)})
    trainer = DualSpeedTrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=Collator(tokenizer.pad_token_id), run_cfg=cfg)
    trainer.add_callback(StepLog(trainer, out / "steps.csv"))
    resume = None
    if t.resume == "auto":
        resume = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    elif t.resume:
        resume = t.resume
    result = trainer.train(resume_from_checkpoint=resume)
    tot = trainer.totals
    runtime = result.metrics["train_runtime"]
    timing = {
        "stage": t.stage, "train_runtime_s": runtime, "steps": trainer.state.global_step,
        "loop_step_time_s": tot["step_time_s"], "samples": tot["samples"],
        "visual_tokens": tot["visual_tokens"], "text_tokens": tot["text_tokens"],
        "tokens_per_s": (tot["visual_tokens"] + tot["text_tokens"]) / runtime if runtime else None,
        "samples_per_s": tot["samples"] / runtime if runtime else None,
        "mode_steps": {k: tot[k] for k in (FAST, SLOW, FULL)}, "resumed_from": resume,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
    }
    meta = {"stage": t.stage, "isolator_len": cfg.fastslow.isolator_len, "fastslow": cfg.to_dict()["fastslow"]}
    export(model, tokenizer, processor, out / "hf", meta, write=args.process_index == 0)
    if args.process_index == 0:
        # timing.json last: its presence marks a finished stage
        (out / "timing.json").write_text(json.dumps(timing, indent=2))
    return timing


def export(model, tokenizer, processor, path: Path, meta: dict, write: bool):
    """Every rank joins the ZeRO-3 gather; only `write` ranks touch the disk."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if write:
                export_hf(model, tokenizer, processor, path, meta)
    elif write:
        export_hf(model, tokenizer, processor, path, meta)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML run config")
    ap.add_argument("--spec", help="run config as a JSON mapping (what the pipeline passes); --config and --set apply on top")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys, e.g. train.lr=1e-3")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = load_config(args.config, args.set, base=json.loads(args.spec) if args.spec else None)
    timing = run(cfg)
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
