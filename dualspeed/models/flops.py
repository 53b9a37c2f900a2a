"""Analytic FLOPs and KV-cache model of one training step and one inference prefill, per step kind.

    python -m dualspeed.bench flops --preset 7b-sft      # a bench preset (dualspeed/bench/presets.py)
    python -m dualspeed.bench flops --config config/llava15_7b.yaml --json

What is counted is what torch.utils.flop_counter.FlopCounterMode counts, so the two can be checked
against each other (tests/test_flops.py): matrix products (2 FLOPs per multiply-add), the patch
convolution and attention's two products, QK^T and PV, over the whole padded square (causal kernels
skip half of it; the counter does not, nor does this model). Norms, activations, softmax and
element-wise work are left out: a few percent of a transformer's time, none of its matmul FLOPs.

Backward follows autograd: a linear layer costs one product for its input's gradient when something
before it trains (the projector, under a frozen LLM) and one for its weight's when it trains itself;
LoRA's A and B are products of their own; the SDPA backward recomputes the score matrix (5 products
against the forward's 2; eager attention: 4). Gradient checkpointing re-runs each LLM layer's forward
during backward. The vision tower is frozen and runs without gradient unless the stage trains it.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from .. import vtp
from ..modes import STEP_KINDS

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """The architecture: a CLIP ViT vision tower, LLaVA's 2-layer projector, a Llama LLM."""

    vis_d: int
    vis_layers: int
    vis_inter: int
    patch: int
    image: int  # crop side in pixels
    d: int
    layers: int
    heads: int
    kv_heads: int
    inter: int
    vocab: int

    @property
    def patches(self) -> int:  # visual tokens per crop (CLS dropped)
        return (self.image // self.patch) ** 2

    @property
    def kv_dim(self) -> int:
        return self.d // self.heads * self.kv_heads

    @classmethod
    def from_hf(cls, config) -> "Shape":
        """From a llava-hf LlavaConfig / LlavaNextConfig."""
        v, t = config.vision_config, config.text_config
        return cls(vis_d=v.hidden_size, vis_layers=v.num_hidden_layers, vis_inter=v.intermediate_size,
                   patch=v.patch_size, image=v.image_size, d=t.hidden_size, layers=t.num_hidden_layers,
                   heads=t.num_attention_heads, kv_heads=t.num_key_value_heads or t.num_attention_heads,
                   inter=t.intermediate_size, vocab=t.vocab_size)


@dataclass(frozen=True)
class Setup:
    """How a stage trains."""

    llm: str = "lora"  # frozen | lora | full
    lora_r: int = 128
    lora_targets: tuple = LORA_TARGETS
    checkpointing: bool = False
    train_vision: bool = False
    attn: str = "sdpa"  # sdpa | eager: the backward of attention is 5 products (sdpa) or 4 (eager)
    prune_method: str = "divprune"

    def __post_init__(self):
        if self.llm not in ("frozen", "lora", "full"):
            raise ValueError(f"Setup.llm must be frozen, lora or full, got {self.llm!r}")
        if self.attn not in ("sdpa", "eager"):
            raise ValueError(f"Setup.attn must be sdpa or eager, got {self.attn!r}")


@dataclass(frozen=True)
class Sample:
    """One sample as the LLM sees it in full mode."""

    text: int  # text tokens, the image placeholder excluded
    visual: int = 0  # visual tokens (LLaVA-NeXT: crops packed with their newline tokens); 0 = text-only
    crops: int = 0  # crops through the vision tower (LLaVA-1.5: 1 per image)
    answer: int = 0  # supervised positions: the only ones the LM head runs on
    spans: int = 1  # supervised spans: PyramidDrop ranks with the token before each (training)


@dataclass
class Flops:
    forward: float = 0.0
    backward: float = 0.0
    recompute: float = 0.0  # forwards re-run under gradient checkpointing
    parts: Counter = field(default_factory=Counter)

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute

    def add(self, part: str, fwd: float, bwd: float = 0.0, rec: float = 0.0) -> None:
        self.forward += fwd
        self.backward += bwd
        self.recompute += rec
        self.parts[part] += fwd + bwd + rec

    def __iadd__(self, other: "Flops") -> "Flops":
        self.forward += other.forward
        self.backward += other.backward
        self.recompute += other.recompute
        self.parts.update(other.parts)
        return self

    def as_dict(self) -> dict:
        return {"total": self.total, "forward": self.forward, "backward": self.backward,
                "recompute": self.recompute, "parts": dict(self.parts)}


def _linear(n: float, i: int, o: int, w_grad: bool, x_grad: bool) -> tuple[float, float]:
    f = 2.0 * n * i * o
    return f, f * (w_grad + x_grad)


def _attention(b: int, t_q: int, t_k: int, d: int, grad: bool, attn: str) -> tuple[float, float]:
    f = 4.0 * b * t_q * t_k * d
    return f, (f * (2.5 if attn == "sdpa" else 2.0) if grad else 0.0)


def _layer(s: Shape, st: Setup, b: int, t: int, grad: bool, x_grad: bool, routed: bool = False
           ) -> tuple[float, float, float]:
    """One decoder layer over [b, t]: forward, backward and checkpoint-recompute FLOPs. x_grad: its input
    needs a gradient."""
    w_grad = grad and st.llm == "full"
    x_in = grad and x_grad  # q, k, v read the (normed) layer input
    x_mid = grad and (x_grad or st.llm != "frozen")  # past a trained q/k/v (LoRA or full), everything does
    shapes = {"q_proj": (s.d, s.d, x_in), "k_proj": (s.d, s.kv_dim, x_in), "v_proj": (s.d, s.kv_dim, x_in),
              "o_proj": (s.d, s.d, x_mid), "gate_proj": (s.d, s.inter, x_mid), "up_proj": (s.d, s.inter, x_mid),
              "down_proj": (s.inter, s.d, x_mid)}
    fwd = bwd = 0.0
    n = b * t
    for name, (i, o, needs) in shapes.items():
        f, g = _linear(n, i, o, w_grad, needs)
        fwd, bwd = fwd + f, bwd + g
        if st.llm == "lora" and name in st.lora_targets:
            fa, ga = _linear(n, i, st.lora_r, grad, needs)
            fb, gb = _linear(n, st.lora_r, o, grad, grad)
            fwd, bwd = fwd + fa + fb, bwd + ga + gb
    f, g = _attention(b, t, t, s.d, x_mid, st.attn)
    fwd, bwd = fwd + f, bwd + g
    rec = fwd if (st.checkpointing and bwd) else 0.0
    if rec and not routed:
        # the recompute stops at the last tensor backward needs (torch's early stop): the layer's last
        # product, whose output only joins the residual, is not re-run - down_proj, or with LoRA on it
        # its B (the base product comes before LoRA's A, whose output B saves)
        lora_down = st.llm == "lora" and "down_proj" in st.lora_targets
        rec -= 2.0 * n * (st.lora_r if lora_down else s.inter) * s.d
    return fwd, bwd, rec


def pdrop_visual(v: int, stage: int, lam: float) -> int:
    """Visual tokens an image of v keeps in PyramidDrop's stage (0 = before the first drop): floor(v * lam^stage)."""
    return math.floor(v * lam ** stage)


def _pdrop_rank(s: Shape, st: Setup, batch: list[Sample], lengths: list[int], queries: list[int]) -> float:
    """One PyramidDrop boundary's ranking, without gradient: the next layer's q and k projections over the padded
    batch (with their LoRA products where LoRA wraps them), and each image sample's queries against every key of
    its row (models/pdrop.py: scores)."""
    b, t = len(batch), max(lengths)
    f = 0.0
    for name, o in (("q_proj", s.d), ("k_proj", s.kv_dim)):
        f += _linear(b * t, s.d, o, False, False)[0]
        if st.llm == "lora" and name in st.lora_targets:
            f += _linear(b * t, s.d, st.lora_r, False, False)[0] + _linear(b * t, st.lora_r, o, False, False)[0]
    return f + sum(2.0 * q * t * s.d for x, q in zip(batch, queries) if x.crops)


def llm(s: Shape, st: Setup, batch: list[Sample], visual: list[int], grad: bool,
        pmod_ratios: list | None = None, pdrop: dict | None = None, queries: list[int] | None = None) -> Flops:
    """The decoder over a padded batch (visual: each sample's visual tokens in this mode) and the LM head
    on the answer positions. pdrop: {layers, lam}, its stages' shorter batches and rankings (queries: each
    sample's query tokens, default its answer spans)."""
    out = Flops()
    b = len(batch)
    lengths = [x.text + v for x, v in zip(batch, visual)]
    t = max(lengths)
    # the first layer's input needs a gradient when visual tokens (from the trained projector) are in it
    # or the embeddings train; past a trained LoRA or weight, every layer's does
    x_grad = any(visual) or st.llm == "full"
    visual0 = list(visual)
    ratios = pmod_ratios or [None] * s.layers
    stage, cuts = 0, set(pdrop["layers"]) if pdrop else set()
    queries = queries or [x.spans for x in batch]
    for i, r in enumerate(ratios):
        if i in cuts:  # the ranking before layer i, then the stage's shorter batch
            out.add("rank", _pdrop_rank(s, st, batch, [x.text + v for x, v in zip(batch, visual)], queries))
            stage += 1
            visual = [pdrop_visual(v0, stage, pdrop["lam"]) for v0 in visual0]
            t = max(x.text + v for x, v in zip(batch, visual))
        if r is not None:  # a routed layer: router on every token, the layer on text + the top floor(r * V) vision tokens
            kept = max(x.text + math.floor(r * v) for x, v in zip(batch, visual))
            fr, gr = _linear(b * t, s.d, 1, grad, grad and x_grad)
            out.add("router", fr, gr, fr if grad and st.checkpointing else 0.0)
            # TanhNorm's weight multiplies the MLP output, so the routed layer re-runs to its end
            f, g, rec = _layer(s, st, b, kept, grad, x_grad, routed=True)
        else:
            f, g, rec = _layer(s, st, b, t, grad, x_grad)
        out.add("llm", f, g, rec)
        x_grad = x_grad or (grad and st.llm != "frozen")
    answers = sum(x.answer for x in batch)
    f, g = _linear(answers, s.d, s.vocab, grad and st.llm == "full", grad)
    out.add("lm_head", f, g)
    return out


def vision(s: Shape, st: Setup, crops: int, prune: bool, p: float, train: bool = True) -> Flops:
    """Vision tower, projector and (fast mode) the pruning plugin over `crops` crops; train=False: no backward."""
    out = Flops()
    if not crops:
        return out
    n, pt = s.patches + 1, s.patches
    grad = st.train_vision and train
    conv = 2.0 * crops * pt * 3 * s.patch ** 2 * s.vis_d
    out.add("vision", conv, conv if grad else 0.0)  # pixels need no gradient: the weight's only
    per_layer = (4 * s.vis_d * s.vis_d + 2 * s.vis_d * s.vis_inter)
    fa, ga = _attention(crops, n, n, s.vis_d, grad, st.attn)
    lin = 2.0 * crops * n * per_layer
    out.add("vision", s.vis_layers * (lin + fa), s.vis_layers * (2 * lin * grad + ga))
    f1, g1 = _linear(crops * pt, s.vis_d, s.d, train, grad)
    f2, g2 = _linear(crops * pt, s.d, s.d, train, train)
    out.add("projector", f1 + f2, g1 + g2)
    if prune and st.prune_method == "divprune":  # the cosine-distance matrix of each crop's tokens
        out.add("prune", 2.0 * crops * pt * pt * s.d)
    return out


def mode_visual(s: Shape, x: Sample, mode: str, p: float, isolator_len: int) -> int:
    """Visual tokens one sample feeds the LLM in a mode: every crop keeps floor((1-p)N) in fast mode."""
    if not x.crops:
        return 0
    if mode in ("fast", "fast_isolator"):
        return x.crops * vtp.keep_count(s.patches, p) + (isolator_len if mode == "fast_isolator" else 0)
    return x.visual


def forward_pass(s: Shape, st: Setup, batch: list[Sample], mode: str, p: float, isolator_len: int, grad: bool,
                 pmod_ratios=None, pdrop: dict | None = None, queries: list[int] | None = None) -> Flops:
    out = vision(s, st, sum(x.crops for x in batch), mode.startswith("fast"), p, grad)
    out += llm(s, st, batch, [mode_visual(s, x, mode, p, isolator_len) for x in batch], grad,
               pmod_ratios if mode == "pmod" else None, pdrop if mode == "pdrop" else None, queries)
    return out


def train_step(s: Shape, st: Setup, batch: list[Sample], mode: str, p: float = 0.9, isolator_len: int = 4,
               pmod_ratios: list | None = None, distill: bool = True, pdrop: dict | None = None) -> Flops:
    """One training step of a batch in a mode: full, fast, fast_isolator, slow (full-sequence student and,
    with distillation, its no-grad fast-with-isolator teacher), pmod (full sequence, routed layers) or pdrop
    (full sequence, PyramidDrop's stages; pdrop = {layers, lam})."""
    if mode not in STEP_KINDS:
        raise ValueError(f"unknown step kind {mode!r}; expected one of {', '.join(STEP_KINDS)}")
    if mode == "pmod" and not pmod_ratios:
        raise ValueError("mode 'pmod' needs pmod_ratios (dualspeed.models.pmod.prd_ratios(layers))")
    if mode == "pdrop" and not pdrop:
        raise ValueError("mode 'pdrop' needs pdrop={'layers': [...], 'lam': ...}")
    if mode != "slow":
        return forward_pass(s, st, batch, mode, p, isolator_len, True, pmod_ratios, pdrop)
    out = forward_pass(s, st, batch, "full", p, isolator_len, True)
    if distill:
        teacher = forward_pass(s, st, batch, "fast_isolator", p, isolator_len, False)
        out.forward += teacher.forward
        out.parts["teacher"] += teacher.total
    return out


def prefill(s: Shape, sample: Sample, mode: str = "normal", p: float = 0.9, isolator_len: int = 0,
            pmod_ratios: list | None = None, attn: str = "sdpa", kv_bytes: int = 2, pdrop: dict | None = None) -> dict:
    """Inference of one sample: prefill FLOPs (the LM head on the last position only, as generation does)
    and the KV-cache bytes it leaves. mode: normal | pruned | pmod | pdrop (the last prompt token ranks)."""
    st = Setup(llm="frozen", attn=attn)
    one = Sample(sample.text, sample.visual, sample.crops, answer=1)
    m = {"normal": "full", "pruned": "fast_isolator" if isolator_len else "fast", "pmod": "pmod", "pdrop": "pdrop"}[mode]
    if mode == "pdrop" and not pdrop:
        raise ValueError("mode 'pdrop' needs pdrop={'layers': [...], 'lam': ...}")
    f = forward_pass(s, st, [one], m, p, isolator_len, False, pmod_ratios, pdrop, queries=[1])
    t_full = one.text + mode_visual(s, one, m, p, isolator_len)
    per_layer = [t_full if (r is None or mode != "pmod") else one.text + math.floor(r * one.visual)
                 for r in (pmod_ratios or [None] * s.layers)]
    if mode == "pdrop":
        stages = [sum(1 for c in pdrop["layers"] if c <= i) for i in range(s.layers)]
        per_layer = [one.text + pdrop_visual(one.visual, k, pdrop["lam"]) for k in stages]
    return {"flops": f.total, "llm_flops": f.parts["llm"], "parts": dict(f.parts), "kv_tokens": per_layer,
            "kv_cache_bytes": sum(per_layer) * 2 * s.kv_dim * kv_bytes}


def anyres_visual(patches: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """LLaVA-NeXT, an image whose aspect matches its grid (no unpadding): (packed tokens, crops).
    Base crop + grid crops, one newline token per row of the re-assembled grid."""
    side = math.isqrt(patches)
    return patches + grid_h * grid_w * patches + grid_h * side, 1 + grid_h * grid_w


def variants(step: dict[str, float], r: float) -> dict[str, float]:
    """Per-variant expected cost per step from per-mode costs, as dualspeed.bench composes step times."""
    return {"baseline": step["full"], "naiveprune": step["fast"],
            "dualspeed": (1 - r) * step["fast_isolator"] + r * step.get("slow", 0.0), "pmod": step["pmod"],
            "pdrop": step["pdrop"]}


def default_pdrop(layers: int) -> dict:
    """PyramidDrop's published split at a depth: boundaries at 1/4, 1/2, 3/4 (8, 16, 24 of 32; 1, 2, 3 of 4)."""
    cuts = sorted({max(1, min(layers - 1, round(layers * k / 4))) for k in (1, 2, 3)})
    return {"layers": cuts, "lam": 0.5}


def compute_speedups(s: Shape, st: Setup, batch: list[Sample], p: float, r: float, isolator_len: int = 4,
                     pmod_ratios: list | None = None, pdrop: dict | None = None) -> dict:
    """Per-mode step FLOPs and the compute-limit speedup of each variant over the baseline."""
    from .pmod import prd_ratios

    ratios = pmod_ratios or prd_ratios(s.layers)
    pdrop = pdrop or default_pdrop(s.layers)
    steps = {m: train_step(s, st, batch, m, p, isolator_len, ratios, pdrop=pdrop) for m in STEP_KINDS}
    per = variants({m: f.total for m, f in steps.items()}, r)
    return {"mode_flops": {m: f.as_dict() for m, f in steps.items()}, "variant_flops": per,
            "compute_speedup": {k: per["baseline"] / v for k, v in per.items()}, "pmod_ratios": ratios,
            "pdrop": pdrop}
