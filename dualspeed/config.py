"""Typed run configuration: defaults < YAML file < `--set key.path=value` overrides.

Unknown keys and ill-typed values are errors that name the key path, raised before any model or
data is touched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .batching import BatchPlan, batch_plan  # noqa: F401  (re-exported: the batch split of a TrainConfig)
from .inllm_config import PDropConfig, PModConfig, check_pdrop  # noqa: F401  (re-exported)
from .typed_merge import ConfigError, merge, set_dotted


REPORT_TO = ("none", "tensorboard", "wandb")  # experiment trackers the Trainer is given
ASPECT_RATIOS = ("pad", "crop", "anyres")


@dataclass
class TinyModelConfig:
    """Sizes of the tiny LLaVA built from config (CPU-friendly)."""

    image_size: int = 32
    patch_size: int = 4
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    llm_hidden: int = 128
    llm_layers: int = 2
    llm_heads: int = 4
    llm_intermediate: int = 256
    max_positions: int = 512


@dataclass
class ModelConfig:
    # tiny: build from `tiny` sizes with the tokenizer at `tokenizer`;
    # llava: load a llava-hf layout checkpoint from `path` (local dir or hub id);
    # compose: LLM `llm` + CLIP `vision_tower` + a fresh projector (pretraining from scratch).
    source: str = "llava"
    path: str = ""
    llm: str = ""
    vision_tower: str = ""
    tokenizer: str = ""
    vision_feature_layer: int = -2
    # [[height, width], ...]: empty = LLaVA-1.5 (one crop per image); set = LLaVA-NeXT anyres with these
    # resolutions (multiples of the crop size). Used when a model is built (tiny, compose); a loaded
    # checkpoint carries its own.
    image_grid_pinpoints: list = field(default_factory=list)
    reinit_projector: bool = False
    # CLIP text tower for the `relevance` signal (CDPruner): auto = compose: the vision tower's repo; llava: the
    # checkpoint's exported clip_text/ if any; tiny: none. none = the LLM's instruction embeddings. Or a hub
    # id / dir of a CLIP with its text tower. See dualspeed/models/clip_text.py.
    clip_text: str = "auto"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    json: str = ""
    image_folder: str = ""
    template: str = "vicuna_v1"  # vicuna_v1 (SFT) | plain (caption pretraining, as LLaVA)
    max_length: int = 2048
    bad_images: str = "fail"  # fail | skip: what the pre-run data check does with unusable samples
    # Defaults are the reference's (LLaVA-1.5 as DualSpeed trains it); docs/recipes.md says where each is set.
    # pad: expand to a square on the processor's mean colour, then resize (LLaVA-1.5 SFT and evaluation);
    # crop: resize the short side and center-crop (LLaVA's 'square', its pretraining); anyres: LLaVA-NeXT crops
    image_aspect_ratio: str = "pad"
    plain_end: str = "newline"  # what ends a `plain` caption: newline (LLaVA's plain sep "\n") | eos
    image_first: bool = True  # move <image> to the start of the human turn, then a newline (LLaVA)
    # spliced: cut the sequence with its visual tokens to max_length (LLaVA); text: cut only the text
    truncate: str = "spliced"


@dataclass
class LoraSettings:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    stage: str = "sft"  # pretrain | sft
    llm: str = "lora"  # frozen | lora | full
    train_vision_tower: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 2e-4  # LLM (LoRA or full) learning rate
    projector_lr: float = 2e-5
    isolator_lr: float = 2e-5
    vision_lr: float = 2e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0 = no clipping: the reference's DeepSpeed configs set none
    # batches of one modality (image or text-only), length-sorted within a global batch (LLaVA-1.5 SFT)
    group_by_modality_length: bool = False
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16  # per process (per GPU)
    # Samples per optimizer step over every process: the recipe's quantity, the same on any GPU or node count.
    # 0 = not set: batch_size x grad_accum x world size. See batch_plan.
    global_batch_size: int = 0
    # 0 = derived: from global_batch_size and the world size at start (1 without it). Set with global_batch_size,
    # it must agree with what that gives.
    grad_accum: int = 0
    seed: int = 0
    bf16: bool = False
    tf32: bool = False
    deepspeed: str = ""
    gradient_checkpointing: bool = False
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    dataloader_workers: int = 0
    resume: str = "auto"  # "auto" (latest checkpoint of this config in output_dir), "" (from step 0) or a path
    # how long a collective waits for a rank that stopped answering before every rank fails (the process group's
    # timeout, TrainingArguments.ddp_timeout); the default is torch's and HF's 30 minutes
    dist_timeout_s: int = 1800
    report_to: str = "none"  # none | tensorboard (events under <output_dir>/tb) | wandb


@dataclass
class FastSlowConfig:
    prune: bool = True  # False = baseline behaviour in this stage (never prune)
    method: str = "divprune"
    ratio: float = 0.9  # p: fraction of visual tokens dropped in fast mode
    slow_prob: float = 0.1  # r: probability of a slow (full-sequence) step; 0 = always fast
    isolator: bool = True
    isolator_len: int = 4
    distill: bool = True
    tau: float = 1.0
    lam: float = 1.0
    tau_squared: bool = True  # scale the KL by tau^2 (the reference), so its gradient keeps its size as tau moves
    # linear: U(-1/sqrt(d), 1/sqrt(d)), the weight init of the reference's bias-free nn.Linear(d, l); normal: N(0, 0.02^2)
    isolator_init: str = "linear"


@dataclass
class RunConfig:
    output_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fastslow: FastSlowConfig = field(default_factory=FastSlowConfig)
    pmod: PModConfig = field(default_factory=PModConfig)
    pdrop: PDropConfig = field(default_factory=PDropConfig)

    def validate(self) -> "RunConfig":
        from . import vtp

        checks = [
            (self.output_dir != "", "output_dir", "must be set"),
            (self.model.source in ("tiny", "llava", "compose"), "model.source", "must be tiny, llava or compose"),
            (self.data.template in ("vicuna_v1", "plain"), "data.template", "must be vicuna_v1 or plain"),
            (self.data.bad_images in ("fail", "skip"), "data.bad_images", "must be fail or skip"),
            (self.data.image_aspect_ratio in ASPECT_RATIOS, "data.image_aspect_ratio", "must be pad, crop or anyres"),
            (self.data.plain_end in ("newline", "eos"), "data.plain_end", "must be newline or eos"),
            (self.data.truncate in ("spliced", "text"), "data.truncate", "must be spliced or text"),
            (self.train.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 = no clipping)"),
            (self.fastslow.isolator_init in ("linear", "normal"), "fastslow.isolator_init", "must be linear or normal"),
            (self.train.stage in ("pretrain", "sft"), "train.stage", "must be pretrain or sft"),
            (self.train.llm in ("frozen", "lora", "full"), "train.llm", "must be frozen, lora or full"),
            (self.train.report_to in REPORT_TO, "train.report_to", "must be none, tensorboard or wandb"),
            (0.0 <= self.fastslow.ratio < 1.0, "fastslow.ratio", "p must be in [0, 1)"),
            (0.0 <= self.fastslow.slow_prob <= 1.0, "fastslow.slow_prob", "r must be in [0, 1]"),
            (self.fastslow.isolator_len >= 1, "fastslow.isolator_len", "must be >= 1"),
            (self.fastslow.tau > 0, "fastslow.tau", "must be > 0"),
            (0.0 < self.pmod.floor <= self.pmod.dense_above <= 1.0, "pmod.floor",
             "must satisfy 0 < pmod.floor <= pmod.dense_above <= 1"),
            (self.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (self.train.grad_accum >= 0, "train.grad_accum", "must be >= 1, or 0 = derived"),
            (self.train.global_batch_size >= 0, "train.global_batch_size", "must be >= 1, or 0 = not set"),
            (self.train.dist_timeout_s >= 1, "train.dist_timeout_s", "must be >= 1 second"),
            (0 <= self.train.seed < 2**32, "train.seed", "must be in [0, 2**32) (numpy's seed range)"),
            (self.model.source != "tiny" or self.model.tiny.image_size % self.model.tiny.patch_size == 0,
             "model.tiny.image_size", f"must be a multiple of model.tiny.patch_size ({self.model.tiny.patch_size})"),
            (self.train.epochs > 0 or self.train.max_steps > 0, "train.epochs", "set epochs > 0 or max_steps > 0"),
        ]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' {why} (got {_get(self, key)!r})")
        builds = self.model.source in ("tiny", "compose")  # a loaded checkpoint is checked when it is loaded
        if builds and bool(self.model.image_grid_pinpoints) != (self.data.image_aspect_ratio == "anyres"):
            raise ConfigError(
                f"config key 'data.image_aspect_ratio' is '{self.data.image_aspect_ratio}' but model.image_grid_pinpoints "
                f"is {'set (LLaVA-NeXT)' if self.model.image_grid_pinpoints else 'empty (LLaVA-1.5)'}: use anyres exactly "
                "when grid pinpoints are set, pad or crop otherwise")
        if self.model.source == "tiny" and not self.model.tokenizer:
            raise ConfigError("config key 'model.tokenizer' must name the offline-built tokenizer dir when model.source=tiny")
        if self.model.source == "llava" and not self.model.path:
            raise ConfigError("config key 'model.path' must name a llava-hf checkpoint when model.source=llava")
        if self.model.source == "compose" and not (self.model.llm and self.model.vision_tower):
            raise ConfigError("config keys 'model.llm' and 'model.vision_tower' are required when model.source=compose")
        if self.fastslow.prune:  # the plan-time check of the method, before any model is built
            t = self.model.tiny
            n = (t.image_size // t.patch_size) ** 2 if self.model.source == "tiny" else None  # else the tower says
            keep = {vtp.keep_count(n, self.fastslow.ratio): f"p={self.fastslow.ratio:g} of {n} tokens"} if n else {}
            try:
                vtp.check(self.fastslow.method, keep)
            except (KeyError, ValueError) as e:
                raise ConfigError(f"config key 'fastslow.method' is '{self.fastslow.method}': {e}") from None
        if self.pmod.enabled and self.train.stage != "sft":
            raise ConfigError("config key 'pmod.enabled' must be false outside the sft stage: p-MoD routes in SFT only")
        if self.pmod.enabled and self.fastslow.prune:
            raise ConfigError("config keys 'pmod.enabled' and 'fastslow.prune' cannot both be true: p-MoD is compared "
                              "with DualSpeed, not combined with it")
        # a command line's list arrives as strings ('--set pdrop.layers=8,16,24')
        self.pdrop.layers = [int(x) if isinstance(x, str) and x.strip().isdigit() else x for x in self.pdrop.layers]
        if self.pdrop.enabled:
            check_pdrop(asdict(self.pdrop), self.model.tiny.llm_layers if self.model.source == "tiny" else None)
        if self.pdrop.enabled and self.pmod.enabled:
            raise ConfigError("config keys 'pdrop.enabled' and 'pmod.enabled' cannot both be true: PyramidDrop and p-MoD "
                              "are compared, not combined (both act on the LLM's layers)")
        if self.pdrop.enabled and self.fastslow.prune:
            raise ConfigError("config keys 'pdrop.enabled' and 'fastslow.prune' cannot both be true: PyramidDrop is "
                              "compared with DualSpeed, not combined with it")
        if self.train.stage == "pretrain" and self.fastslow.prune and self.fastslow.slow_prob > 0:
            raise ConfigError("config key 'fastslow.slow_prob' must be 0 in the pretraining stage: it is fast mode only")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Build a validated RunConfig from defaults, an optional YAML file, and `a.b=c` overrides."""
    cfg = RunConfig()
    if base:
        merge(cfg, base)
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        merge(cfg, data)
    extra: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, value = item.split("=", 1)
        set_dotted(extra, key.strip(), value)
    merge(cfg, extra)
    return cfg.validate()


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
