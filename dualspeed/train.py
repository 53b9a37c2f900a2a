"""One training loop for every variant: baseline, NaivePrune, DualSpeed and the ablations.

    python -m dualspeed.train --config run.yaml [--set train.lr=1e-3 ...]

A variant is only a setting of `fastslow`: prune=false is the baseline; prune with slow_prob=0 and
isolator=false is NaivePrune; slow_prob>0 adds fast-slow, isolator adds the mode isolator,
distill adds self-distillation in slow steps. `pmod.enabled` (with prune=false) is the p-MoD
comparison row: the same loop with Mixture-of-Depths layers in the LLM.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from . import cli
from . import flops, provenance, vtp
from .build import load_components, reinit_projector
from .checkpoint import carry_extras, export_hf, load_trainable, save_trainable
from .config import RunConfig, dump_config, load_config
from .data import Collator, LlavaDataset
from .data_check import checked_rows
from .fastslow import ModeSchedule, mode_loss
from .memory import PeakMemory
from .modes import FULL, TRAINING_MODES, TRAINING_MODE_CODES
from .model import DualSpeedLlava, Prune
from .tracking import mode_scalars, report_to
from .vtp import clip_text
from .resume import guard_finished, resume_point
from .sampler import grouped_sampler
from .steplog import StepLog, step_totals

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


class DualSpeedTrainer(Trainer):
    def __init__(self, *args, run_cfg: RunConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_cfg = run_cfg
        fs = run_cfg.fastslow
        self.prune = Prune(fs.method, fs.ratio) if fs.prune else None
        self.schedule = ModeSchedule(fs.slow_prob if fs.prune else 0.0, run_cfg.train.seed)
        self.rank_modes_checked = 0
        self._stats = self._empty_stats()
        self._window: list[dict] = []  # step stats since the Trainer last logged, for the trackers
        self.flop_counter = flops.StepCounter(self.accelerator.unwrap_model(self.model), run_cfg)

    @staticmethod
    def _empty_stats():
        return {"mode": "", "loss": 0.0, "teacher_ce": math.nan, "student_ce": math.nan, "kl": math.nan,
                "visual_tokens": 0, "text_tokens": 0, "samples": 0, "flops": 0.0, "n": 0}

    def pop_step_stats(self) -> dict:
        s = self._stats
        if s["n"]:
            for k in ("loss", "teacher_ce", "student_ce", "kl"):
                s[k] = round(s[k] / s["n"], 6)
        if self.args.world_size > 1:
            s = self._across_ranks(s)
        self._stats = self._empty_stats()
        self._window.append(s)
        return s

    def log(self, logs: dict, *args, **kwargs) -> None:
        """The Trainer's logs plus DualSpeed's per-mode averages (tracking.mode_scalars), so every
        `report_to` tracker gets both (TensorBoard tags train/<name>)."""
        if "loss" in logs and self._window:
            logs = {**logs, **mode_scalars(self._window)}
            self._window = []
        super().log(logs, *args, **kwargs)

    def _across_ranks(self, s: dict) -> dict:
        """Sum the step's token and sample counts over ranks, and check every rank ran the same mode:
        a rank that drew another mode would train a different objective (or deadlock in DDP)."""
        code = TRAINING_MODE_CODES[s["mode"] or FULL]
        local = torch.tensor([[code, s["visual_tokens"], s["text_tokens"], s["samples"], s["flops"]]],
                             dtype=torch.float64, device=self.args.device)
        every = self.accelerator.gather(local).cpu()  # [world, 5]
        if not bool((every[:, 0] == code).all()):
            raise RuntimeError(f"ranks disagree on the mode of optimizer step {self.state.global_step}: "
                               f"{[TRAINING_MODES[int(c)] for c in every[:, 0]]}")
        self.rank_modes_checked += 1
        total = every[:, 1:].sum(0).tolist()
        return {**s, "visual_tokens": int(total[0]), "text_tokens": int(total[1]), "samples": int(total[2]),
                "flops": total[3]}

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
        s["samples"] += inputs["input_ids"].shape[0]

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        return grouped_sampler(self.run_cfg.train, self.args, ds) or super()._get_train_sampler(train_dataset)

    def mode_at(self, step: int) -> str:
        """The mode of optimizer step `step` (full when this stage never prunes)."""
        return FULL if self.prune is None else self.schedule.mode(step)

    def current_mode(self) -> str:
        # One mode per optimizer step: every micro-batch and every rank agree, and a resumed run
        # replays the same sequence because the step counter is restored from the checkpoint.
        return self.mode_at(self.state.global_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fs = self.run_cfg.fastslow
        mode = self.current_mode()
        r = mode_loss(model, inputs, mode, self.prune, fs.isolator, fs.distill, fs.tau, fs.lam,
                      teacher_model=self.accelerator.unwrap_model(model), tau_squared=fs.tau_squared)
        if not bool(torch.isfinite(r.loss.detach())):
            self._stop_nonfinite(mode, r)
        self._record(mode, r.loss.detach(), inputs, r.visual_tokens, teacher_ce=r.teacher_ce,
                     student_ce=r.student_ce, kl=r.kl)
        # analytic FLOPs of this micro-batch as it ran (dualspeed/flops.py), from its own token counts
        self._stats["flops"] += self.flop_counter.step(self.accelerator.unwrap_model(model), inputs, mode,
                                                       r.out.visual_tokens)
        return (r.loss, r.out) if return_outputs else r.loss

    def _stop_nonfinite(self, mode: str, r) -> None:
        """Stop at the first NaN/inf loss: every later step would only spread it into the weights."""
        step = self.state.global_step
        note = {"step": step, "mode": mode, "loss": float(r.loss.detach()),
                **{k: (None if v is None else float(v)) for k, v in
                   (("teacher_ce", r.teacher_ce), ("student_ce", r.student_ce), ("kl", r.kl))}}
        path = Path(self.run_cfg.output_dir) / "nonfinite_loss.json"
        if self.args.process_index == 0:
            provenance.write_json(path, note)
        raise FloatingPointError(
            f"non-finite loss {note['loss']} at optimizer step {step} in {mode} mode (details in {path}); the weights "
            "were not updated. Lower the learning rate, check the data, or resume from the last checkpoint")

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
        # under DeepSpeed this fills the configs' "gradient_clipping": "auto"; 0 = none, as the reference
        max_grad_norm=t.max_grad_norm,
        warmup_ratio=t.warmup_ratio, lr_scheduler_type=t.scheduler, num_train_epochs=t.epochs, max_steps=t.max_steps,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, bf16=t.bf16 and cuda, tf32=(t.tf32 and cuda) or None,
        deepspeed=t.deepspeed or None, seed=t.seed, data_seed=t.seed, report_to=report_to(t.report_to),
        remove_unused_columns=False,
        ignore_data_skip=False,  # a resumed run skips the batches it already trained on: the same data order
        dataloader_num_workers=t.dataloader_workers, use_cpu=not cuda, save_safetensors=False,
        # slow steps leave the isolator out of the graph; DDP must be told that can happen
        ddp_find_unused_parameters=uses_unused, logging_dir=str(out / "tb"),
        disable_tqdm=False,
    )


def run(cfg: RunConfig, force: bool = False) -> dict:
    out = Path(cfg.output_dir)
    # before anything is written or loaded: a finished run of another config is never overwritten unasked
    finished = guard_finished(cfg, out, force, write=int(os.environ.get("RANK", "0")) == 0)
    if finished is not None:
        return finished
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    # Seed before anything random is built (a fresh projector, the isolator, LoRA, the data order):
    # two runs of one config must give the same bytes.
    set_seed(t.seed)
    # A configured CLIP text tower that cannot be read fails before the data check and any weights
    clip_where, clip_how = clip_text.resolve(cfg.model)
    if clip_where:
        clip_text.check(clip_where, clip_how)
    # Every image is opened and every conversation checked before a model is loaded: a bad sample
    # fails here, named, rather than hours into the run.
    world_main = int(os.environ.get("RANK", "0")) == 0
    rows, skipped = checked_rows(cfg.data, out, progress=world_main)
    dtype = torch.bfloat16 if (t.bf16 and torch.cuda.is_available()) else torch.float32
    llava, tokenizer, processor = load_components(cfg.model, dtype=dtype, seed=t.seed)
    d = cfg.data
    dataset = LlavaDataset(d.json, d.image_folder, tokenizer, processor, d.template, d.max_length,
                           d.image_aspect_ratio, d.plain_end, d.image_first, rows=rows)
    if cfg.model.reinit_projector:
        reinit_projector(llava, t.seed)
    model = DualSpeedLlava(llava, cfg.fastslow.isolator_len, isolator_init=cfg.fastslow.isolator_init,
                           max_length=d.max_length if d.truncate == "spliced" else None)
    if cfg.pmod.enabled:
        pm = cfg.pmod
        log.info("p-MoD ratios per layer: %s", model.enable_pmod(pm.dense_above, pm.floor, pm.alpha, pm.beta).ratios)
    # the previous stage's isolator (and routers) continue here rather than restart from a fresh init
    carried = carry_extras(model, cfg.model.path) if cfg.model.source == "llava" else []
    if carried:
        log.info("continuing from %s's trained %s", cfg.model.path, ", ".join(carried))
    plugin = vtp.get(cfg.fastslow.method) if cfg.fastslow.prune else None
    if clip_where and plugin is not None and "relevance" in plugin.required_signals():
        model.attach_clip_text(clip_text.ClipText.load(clip_where, dtype), tokenizer)  # once, frozen
    counts = set_trainable(model, cfg)
    if t.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    args = training_args(cfg, out)
    resume = resume_point(cfg, out, write=args.process_index == 0)
    if args.process_index == 0:
        dump_config(cfg, out / "config.resolved.yaml")
        # e.g. CDPruner's relevance source and the sign that runs with it
        vtp_info = plugin.provenance(model.signal_sources(plugin.required_signals())) if plugin else None
        provenance.write(out, {"trainable_parameters": counts, "samples": len(dataset), "skipped_samples": skipped,
                               "carried_extras": carried, "resumed_from": resume, "seed": t.seed, "vtp": vtp_info})
    trainer = DualSpeedTrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=Collator(tokenizer.pad_token_id), run_cfg=cfg)
    trainer.add_callback(StepLog(trainer, out / "steps.csv"))
    memory = PeakMemory(trainer)
    trainer.add_callback(memory)
    result = trainer.train(resume_from_checkpoint=resume)
    timing = {"stage": t.stage, **step_totals(out / "steps.csv", resume, result.metrics["train_runtime"]),
              "resumed_from": resume, "world_size": args.world_size, **memory.summary(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"}
    if args.world_size > 1:
        timing["ranks_agree"] = {"modes_checked_steps": trainer.rank_modes_checked,
                                 "weights": ranks_hold_same_weights(trainer)}
    trained = (["isolator"] if (cfg.fastslow.prune and cfg.fastslow.isolator) or "isolator" in carried else [])
    trained += ["pmod"] if model.pmod is not None else []
    meta = {"stage": t.stage, "isolator_len": cfg.fastslow.isolator_len, "fastslow": cfg.to_dict()["fastslow"],
            "trained_extras": trained, "carried_from": cfg.model.path if carried else None,
            "data": {"image_aspect_ratio": d.image_aspect_ratio}}  # what evaluation preprocesses images with
    export(model, tokenizer, processor, out / "hf", meta, write=args.process_index == 0, clip_from=clip_where)
    if args.process_index == 0:
        # timing.json last: its presence marks a finished stage
        provenance.write_json(out / "timing.json", timing)
    return timing


def ranks_hold_same_weights(trainer: Trainer) -> bool:
    """After training, every rank's trainable tensors must be equal (DDP keeps them so); a per-tensor
    checksum is gathered and compared. Skipped under ZeRO, whose ranks hold shards."""
    if trainer.is_deepspeed_enabled:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    sums = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad])
    every = trainer.accelerator.gather(sums[None].to(trainer.args.device)).cpu()
    same = bool((every == every[0]).all())
    if not same:
        raise RuntimeError("ranks ended training with different weights")
    return same


def export(model, tokenizer, processor, path: Path, meta: dict, write: bool, clip_from: str | None = None):
    """Every rank joins the ZeRO-3 gather; only `write` ranks touch the disk."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if write:
                export_hf(model, tokenizer, processor, path, meta, clip_from)
    elif write:
        export_hf(model, tokenizer, processor, path, meta, clip_from)


def parse_args(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="YAML run config")
    ap.add_argument("--spec", help="run config as a JSON mapping (what the pipeline passes); --config and --set apply on top")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override config keys, e.g. --set train.lr=1e-3 --set train.epochs=2 (every one applies)")
    ap.add_argument("--force", action="store_true",
                    help="replace a finished run of a different config in the output directory (refused without it)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = load_config(args.config, args.set, base=json.loads(args.spec) if args.spec else None)
    timing = run(cfg, force=args.force)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every rank waits for rank 0's export, then the group is torn down before the interpreter exits: a rank
        # leaving with its gloo/NCCL threads still alive aborted now and then ("terminate called without an
        # active exception", SIGABRT), failing the launch after a finished run
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
