"""The run config of one stand-in's pretraining: defaults < the pipeline's spec; unknown keys refused."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...config import TinyModelConfig
from ...typed_merge import ConfigError, merge

KINDS = ("clip", "llm")


@dataclass
class StandinTrain:
    epochs: float = 1.0  # passes over the data (clip: pairs; llm: documents), unless max_steps > 0
    max_steps: int = -1
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 50
    # llm: the first copy_steps steps read only the documents of kind "repeat" (a run of words, twice). A language
    # model learns to look back and copy (induction heads) before it learns what to copy; from the mixed corpus
    # alone the tiny Llama never did in 2,000 steps (it copied 4% of repeated colour words), and a frozen LLM that
    # cannot copy cannot caption through a projector in stage 1.
    copy_steps: int = 0
    bf16: bool = False  # autocast over fp32 weights, attention in fp32 (train/cpu_bf16.py)


@dataclass
class StandinConfig:
    kind: str = ""  # clip: contrastive on image-caption pairs; llm: causal LM on text documents
    output_dir: str = ""
    data: str = ""  # clip: a JSON of {"image", "caption"}; llm: a JSON of {"text"} / {"conversations"} documents
    image_folder: str = ""  # clip: where the images are
    tokenizer: str = ""  # the word-level tokenizer dir (clip: its CLIP view, which ends a text with </s>)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    train: StandinTrain = field(default_factory=StandinTrain)

    def validate(self) -> "StandinConfig":
        checks = [(self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}"),
                  (bool(self.output_dir), "output_dir", "must be set"),
                  (bool(self.data), "data", "must name the training data JSON"),
                  (bool(self.tokenizer), "tokenizer", "must name the tokenizer dir"),
                  (self.kind != "clip" or bool(self.image_folder), "image_folder", "must be set for kind clip"),
                  (self.train.batch_size >= 2, "train.batch_size", "must be >= 2"),
                  (self.train.epochs > 0 or self.train.max_steps > 0, "train.epochs", "set epochs > 0 or max_steps > 0")]
        for ok, key, why in checks:
            if not ok:
                raise ConfigError(f"stand-in config key '{key}' {why}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def load(spec: dict) -> StandinConfig:
    cfg = StandinConfig()
    merge(cfg, spec)
    return cfg.validate()
