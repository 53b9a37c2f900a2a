"""One training run of one stage: check, build, train, export. The same loop for every variant: baseline,
NaivePrune, DualSpeed and the ablations.

A variant is only a setting of `fastslow`: prune=false is the baseline; prune with slow_prob=0 and
isolator=false is NaivePrune; slow_prob>0 adds fast-slow, isolator adds the mode isolator,
distill adds self-distillation in slow steps. `pmod.enabled` (with prune=false) is the p-MoD
comparison row: the same loop with Mixture-of-Depths layers in the LLM.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from .. import provenance, vtp
from ..config import BatchPlan, RunConfig, dump_config
from ..data.check import checked_rows
from ..data.dataset import Collator, LlavaDataset
from ..models import causal_mask, clip_text
from ..models.build import load_components, reinit_projector
from ..models.checkpoint import carry_extras, export_hf
from ..models.llava import DualSpeedLlava
from . import cpu_bf16
from .freeze import set_trainable
from .memory import PeakMemory
from .resume import guard_finished, resume_point
from .steplog import StepLog, step_totals
from .tracking import report_to
from .trainer import DualSpeedTrainer

log = logging.getLogger("dualspeed.train")


def world_size() -> int:
    """Processes of this run, as the launcher (torchrun) says; 1 when started as plain python."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group(timeout_s: int) -> None:
    """Several processes on the CPU: the gloo group with train.dist_timeout_s. The Trainer would create it without
    ddp_timeout (transformers passes it for CUDA and DeepSpeed only), and a rank that stops answering then held the
    others in their collective for torch's default 30 minutes."""
    import torch.distributed as dist

    if world_size() > 1 and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


def training_args(cfg: RunConfig, out: Path, batch: BatchPlan) -> TrainingArguments:
    t = cfg.train
    cuda = torch.cuda.is_available()
    uses_unused = cfg.fastslow.prune and cfg.fastslow.isolator and cfg.fastslow.slow_prob > 0
    # TrainingArguments sets ACCELERATE_MIXED_PRECISION for bf16 and falls back to it otherwise, so a bf16 run earlier
    # in the same process (a test, a notebook) would make this one bf16 too: each run's precision is its config's
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if t.bf16 else "no"
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=batch.per_device,
        gradient_accumulation_steps=batch.grad_accum, learning_rate=t.lr, weight_decay=t.weight_decay,
        # under DeepSpeed this fills the configs' "gradient_clipping": "auto"; 0 = none, as the reference
        max_grad_norm=t.max_grad_norm,
        warmup_ratio=t.warmup_ratio, lr_scheduler_type=t.scheduler, num_train_epochs=t.epochs, max_steps=t.max_steps,
        logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        # on the CPU too: the Trainer's autocast over fp32 weights (the model loads in bf16 on a GPU only)
        bf16=t.bf16, tf32=(t.tf32 and cuda) or None,
        deepspeed=t.deepspeed or None, seed=t.seed, data_seed=t.seed, report_to=report_to(t.report_to),
        remove_unused_columns=False,
        ignore_data_skip=False,  # a resumed run skips the batches it already trained on: the same data order
        dataloader_num_workers=t.dataloader_workers, use_cpu=not cuda, save_safetensors=False,
        # slow steps leave the isolator out of the graph; DDP must be told that can happen
        ddp_find_unused_parameters=uses_unused, logging_dir=str(out / "tb"),
        # a rank that stops answering fails every collective after this long, rather than hanging the job
        ddp_timeout=t.dist_timeout_s,
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
    # The batch split of this start, from the world size the launcher gave: a global batch that does not divide,
    # or a resume that would change it, fails here, before any data or model is read.
    resume, batch = resume_point(cfg, out, write=int(os.environ.get("RANK", "0")) == 0, world_size=world_size())
    log.info("global batch %d = %d per device x %d accumulation steps x %d processes", batch.global_batch,
             batch.per_device, batch.grad_accum, batch.world_size)
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
    if t.bf16 and not torch.cuda.is_available():
        cpu_bf16.fp32_attention()
    causal_mask.install()
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
    if cfg.pdrop.enabled:  # checked against the loaded LLM's depth here (a tiny LLM's at plan time too)
        log.info("PyramidDrop: %s", model.enable_pdrop(cfg.pdrop.layers, cfg.pdrop.lam).meta())
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
    init_process_group(t.dist_timeout_s)
    args = training_args(cfg, out, batch)
    if args.world_size != batch.world_size:
        raise RuntimeError(f"the Trainer runs on {args.world_size} processes, WORLD_SIZE said {batch.world_size}")
    if args.process_index == 0:
        dump_config(cfg, out / "config.resolved.yaml")
        # e.g. CDPruner's relevance source and the sign that runs with it
        vtp_info = plugin.provenance(model.signal_sources(plugin.required_signals())) if plugin else None
        provenance.write(out, {"trainable_parameters": counts, "samples": len(dataset), "skipped_samples": skipped,
                               "carried_extras": carried, "resumed_from": resume, "seed": t.seed, "vtp": vtp_info,
                               "batch": batch.to_dict()})
    trainer = DualSpeedTrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=Collator(tokenizer.pad_token_id), run_cfg=cfg, batch=batch)
    trainer.add_callback(StepLog(trainer, out / "steps.csv"))
    memory = PeakMemory(trainer)
    trainer.add_callback(memory)
    result = trainer.train(resume_from_checkpoint=resume)
    timing = {"stage": t.stage, **step_totals(out / "steps.csv", resume, result.metrics["train_runtime"]),
              "resumed_from": resume, "world_size": args.world_size, "batch": batch.to_dict(), **memory.summary(),
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
