"""The HF Trainer with DualSpeed's step: one training mode per optimizer step, its loss, per-step statistics
(tokens, FLOPs, the losses of each mode), a learning rate per optimizer part, and trainable-only checkpoints."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import Trainer

from .. import provenance
from ..config import BatchPlan, RunConfig
from ..data.sampler import GlobalBatchSampler
from ..models.checkpoint import load_trainable, save_trainable
from ..models.prune import Prune
from ..modes import FULL, TRAINING_MODE_CODES, TRAINING_MODES
from .losses import ModeSchedule, mode_loss
from .resume import checkpoint_meta
from .step_flops import StepCounter
from .tracking import mode_scalars

log = logging.getLogger("dualspeed.train")


class DualSpeedTrainer(Trainer):
    def __init__(self, *args, run_cfg: RunConfig, batch: BatchPlan, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_cfg, self.batch = run_cfg, batch
        fs = run_cfg.fastslow
        self.prune = Prune(fs.method, fs.ratio) if fs.prune else None
        self.schedule = ModeSchedule(fs.slow_prob if fs.prune else 0.0, run_cfg.train.seed)
        self.rank_modes_checked = 0
        self._stats = self._empty_stats()
        self._window: list[dict] = []  # step stats since the Trainer last logged, for the trackers
        self.flop_counter = StepCounter(self.accelerator.unwrap_model(self.model), run_cfg)
        self._bare_of = (None, None)

    def _bare(self, model):
        """The model inside its DDP/DeepSpeed wrapper, looked up once per wrapper: accelerate's unwrap_model
        reads package metadata on every call (3% of the tiny SFT loop at two calls a step)."""
        if self._bare_of[0] is not model:
            self._bare_of = (model, self.accelerator.unwrap_model(model))
        return self._bare_of[1]

    @staticmethod
    def _empty_stats():
        return {"mode": "", "loss": 0.0, "teacher_ce": math.nan, "student_ce": math.nan, "kl": math.nan,
                "visual_tokens": 0, "text_tokens": 0, "samples": 0, "flops": 0.0, "n": 0}

    def pop_step_stats(self) -> dict:
        s = self._stats
        if self.args.world_size > 1:
            s = self._across_ranks(s)
        if s["n"]:  # the mean over every micro-batch of the global batch, on every rank
            for k in ("loss", "teacher_ce", "student_ce", "kl"):
                s[k] = round(s[k] / s["n"], 6)
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
        """Sum the step's counts and losses over ranks, and check every rank ran the same mode: a rank that drew
        another mode would train a different objective (or deadlock in DDP). Losses are summed with their
        micro-batch counts, so steps.csv holds the same mean however the global batch is split."""
        code = TRAINING_MODE_CODES[s["mode"] or FULL]
        keys = ["visual_tokens", "text_tokens", "samples", "flops", "n", "loss", "teacher_ce", "student_ce", "kl"]
        local = torch.tensor([[code] + [s[k] for k in keys]], dtype=torch.float64, device=self.args.device)
        every = self.accelerator.gather(local).cpu()  # [world, 1 + len(keys)]
        if not bool((every[:, 0] == code).all()):
            raise RuntimeError(f"ranks disagree on the mode of optimizer step {self.state.global_step}: "
                               f"{[TRAINING_MODES[int(c)] for c in every[:, 0]]}")
        self.rank_modes_checked += 1
        total = dict(zip(keys, every[:, 1:].sum(0).tolist()))
        ints = ("visual_tokens", "text_tokens", "samples", "n")
        return {**s, **{k: int(v) if k in ints else v for k, v in total.items()}}

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
        """Whole global batches in an order that no process count changes (data/sampler.py); accelerate deals each
        per-device batch to rank (batch index mod world size), so a step trains the same samples on any split."""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        t = self.run_cfg.train
        lengths = ds.modality_lengths() if t.group_by_modality_length else None
        return GlobalBatchSampler(len(ds), self.batch.global_batch, self.batch.per_device, self.args.seed, lengths)

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
                      teacher_model=self._bare(model), tau_squared=fs.tau_squared)
        if not bool(torch.isfinite(r.loss.detach())):
            self._stop_nonfinite(mode, r)
        self._record(mode, r.loss.detach(), inputs, r.visual_tokens, teacher_ce=r.teacher_ce,
                     student_ce=r.student_ce, kl=r.kl)
        # analytic FLOPs of this micro-batch as it ran (step_flops.py), from its own token counts
        self._stats["flops"] += self.flop_counter.step(self._bare(model), inputs, mode,
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
                "global_step": self.state.global_step, **checkpoint_meta(self.batch)}
        save_trainable(model, output_dir, meta, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        load_trainable(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Several processes on the CPU (gloo): the Trainer maps the optimizer state onto args.device, there
        # torch.device("cpu", 0), which torch.load cannot restore onto ("cpu" only), so no such run could resume.
        ddp_cpu = self.args.world_size > 1 and self.args.device.type == "cpu" and not self.is_deepspeed_enabled
        if checkpoint is None or not ddp_cpu:
            return super()._load_optimizer_and_scheduler(checkpoint)
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        opt, sched = Path(checkpoint) / OPTIMIZER_NAME, Path(checkpoint) / SCHEDULER_NAME
        if opt.is_file() and sched.is_file():
            self.optimizer.load_state_dict(torch.load(opt, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(sched, weights_only=True))
