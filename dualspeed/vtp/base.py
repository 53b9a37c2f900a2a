"""The VTP plugin interface and its registry.

Two kinds of method, one file each:

- a *selection* method (`VTPMethod.select`) chooses which k of N visual tokens survive and returns
  their indices; the caller gathers them in their original order (the LLM reads position from order);
- a *merge* method (`MergeMethod.merge`) returns k new tokens per image as a `Reduced`: which original
  tokens each output token averages, with what weight, and one representative original index per
  output token (the order the LLM sees them in, and what the report shows).

Both see the projected features of a batch of images or crops at once. The weights are computed
without gradient and applied by the model, so the projector still learns through merged tokens.

A method declares the side information it needs in `signals`; the model computes only what is declared,
in the same vision-tower pass (see models/signals.py):
  text           ctx.text_embeds [C, T, D], ctx.text_mask [C, T]: the instruction's LLM embeddings
  cls_attention  ctx.cls_attention [C, N]: the CLS query's attention to each patch, summed over heads
  keys           ctx.keys [C, N, Dh]: each patch's attention key, averaged over heads
  relevance      ctx.relevance [C, N]: each token's cosine similarity to the instruction, averaged over it,
                 from the best source the model has (ctx.relevance_source names it): CLIP's text tower in
                 CLIP's joint space where one is configured (models/clip_text.py), else the projected token
                 against the instruction's LLM embeddings. Raw: not normalised, not negated.
The tower layer of cls_attention/keys is the one whose output LLaVA uses as features (the penultimate
for the real recipes), unless a method sets `signal_layer`.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

SIGNALS = ("text", "cls_attention", "keys", "relevance")
# where the model took the relevance signal from (VTPContext.relevance_source): CLIP's text tower in CLIP's
# joint space, or the instruction's LLM input embeddings against the projected tokens
SOURCE_CLIP, SOURCE_LLM = "clip_text", "llm_instruction_embeddings"


@dataclass
class VTPContext:
    """Side information a plugin may use (only what it declared is filled in).

    generator: a torch.Generator for methods that draw random numbers, so runs are reproducible.
    """

    text_embeds: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    generator: torch.Generator | None = None
    relevance: torch.Tensor | None = None
    relevance_source: str | None = None  # SOURCE_CLIP or SOURCE_LLM

    def missing(self, signals) -> list[str]:
        have = {"text": self.text_embeds is not None, "cls_attention": self.cls_attention is not None,
                "keys": self.keys is not None, "relevance": self.relevance is not None}
        return [s for s in signals if not have[s]]


@dataclass
class Reduced:
    """k output tokens per row built from N input tokens.

    index:   [B, k] one original index per output token, ascending: the output order.
    weights: [B, k, N] how much of each original token goes into each output token (rows sum to 1),
             or None when output token i is exactly the original token index[i] (a selection).
    """

    index: torch.Tensor
    weights: torch.Tensor | None = None

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, k, D]; differentiable in feats."""
        if self.weights is None:
            return feats.gather(1, self.index.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        return torch.bmm(self.weights.to(feats.dtype), feats)

    def members(self, n: int | None = None) -> torch.Tensor:
        """[B, k, N] bool: which original tokens each output token is made of (a selection needs N)."""
        if self.weights is not None:
            return self.weights > 0
        if n is None:
            raise ValueError("members() of a selection needs the number of original tokens n")
        b, k = self.index.shape
        out = torch.zeros(b, k, n, dtype=torch.bool, device=self.index.device)
        return out.scatter_(2, self.index.unsqueeze(-1), True)


@dataclass(frozen=True)
class Option:
    """One key a method spec may set ('name:key=value'): what it allows, in words, and the test of a value."""

    allowed: str
    ok: Callable[[object], bool]


class VTPMethod(ABC):
    """Base class of a visual-token-pruning plugin (a selection method)."""

    name: str = ""
    kind: str = "select"
    signals: tuple[str, ...] = ()  # side information this method reads from its VTPContext; see SIGNALS
    signal_layer: int | None = None  # tower layer of cls_attention/keys; None: the LLaVA feature layer
    needs_text: bool = False  # older spelling of signals = ("text",); still honoured
    # The keys a spec may set, each with what it allows: the one check of a method's options, at plan time and at
    # run time (check). None, for a plugin that declares none: its constructor's keyword arguments, any value.
    options: dict[str, Option] | None = None

    def fits(self, k: int) -> str | None:
        """Why this method, as configured, cannot keep k tokens per crop (an option asking for more), or None."""
        return None

    def required_signals(self) -> tuple[str, ...]:
        sig = tuple(self.signals) + (("text",) if self.needs_text and "text" not in self.signals else ())
        unknown = [s for s in sig if s not in SIGNALS]
        if unknown:
            raise ValueError(f"VTP '{self.name}' declares unknown signal(s) {unknown}; known: {', '.join(SIGNALS)}")
        return sig

    def describe(self) -> dict:
        """What this method ran with, for the run's provenance and metrics (extend in a subclass)."""
        return {"name": self.name, "kind": self.kind, "signals": list(self.required_signals())}

    def provenance(self, sources: dict) -> dict:
        """describe() plus where the model took the declared signals from (DualSpeedLlava.signal_sources):
        what a run's provenance.json and an evaluation's metrics record."""
        return {**self.describe(), **({"sources": dict(sources)} if sources else {})}

    @abstractmethod
    def select(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> torch.Tensor:
        """feats: [B, N, D] -> LongTensor [B, k] of kept token indices (any order; the caller sorts)."""

    def _check(self, feats: torch.Tensor, k: int, ctx: VTPContext | None) -> VTPContext:
        if feats.dim() != 3:
            raise ValueError(f"VTP '{self.name}' expects features [B, N, D], got shape {tuple(feats.shape)}")
        n = feats.shape[1]
        if not 1 <= k <= n:
            raise ValueError(f"VTP '{self.name}': cannot keep k={k} of N={n} tokens (need 1 <= k <= N)")
        why = self.fits(k)
        if why:
            raise ValueError(f"VTP '{self.name}': {why}")
        ctx = ctx or VTPContext()
        missing = ctx.missing(self.required_signals())
        if missing and k < n:  # keeping all N reads no signal
            raise ValueError(f"VTP '{self.name}' needs the signal(s) {missing} in its VTPContext; "
                             "DualSpeedLlava fills in what a method declares in `signals`")
        return ctx

    def reduce(self, feats: torch.Tensor, k: int, ctx: VTPContext | None = None) -> Reduced:
        """The one entry point the model uses, whatever the kind of method."""
        ctx = self._check(feats, k, ctx)
        b, n = feats.shape[:2]
        if k == n:  # keeping everything is the identity, whatever the method
            return Reduced(torch.arange(n, device=feats.device).expand(b, n))
        with torch.no_grad():
            return self._reduce(feats, k, ctx)

    def _reduce(self, feats, k, ctx) -> Reduced:
        idx = self.select(feats, k, ctx)
        if idx.shape != (feats.shape[0], k):
            raise RuntimeError(f"VTP '{self.name}' returned shape {tuple(idx.shape)}, expected {(feats.shape[0], k)}")
        return Reduced(idx.sort(dim=1).values)

    def __call__(self, feats: torch.Tensor, k: int, ctx: VTPContext | None = None):
        """Selection methods: the kept indices [B, k], ascending. Merge methods: their `Reduced`."""
        return self.reduce(feats, k, ctx).index


class MergeMethod(VTPMethod):
    """Base class of a plugin that merges tokens instead of dropping them."""

    kind = "merge"

    def select(self, feats, k, ctx):
        raise TypeError(f"VTP '{self.name}' merges tokens; call reduce() for its Reduced")

    @abstractmethod
    def merge(self, feats: torch.Tensor, k: int, ctx: VTPContext) -> Reduced:
        """feats: [B, N, D] -> Reduced with index [B, k] and weights [B, k, N] (any row order; sorted after)."""

    def _reduce(self, feats, k, ctx) -> Reduced:
        red = self.merge(feats, k, ctx)
        b, n = feats.shape[:2]
        if red.index.shape != (b, k) or red.weights is None or red.weights.shape != (b, k, n):
            raise RuntimeError(f"VTP '{self.name}' returned index {tuple(red.index.shape)} and weights "
                               f"{None if red.weights is None else tuple(red.weights.shape)}; expected {(b, k)} "
                               f"and {(b, k, n)}")
        order = red.index.argsort(dim=1, stable=True)
        return Reduced(red.index.gather(1, order), red.weights.gather(1, order.unsqueeze(-1).expand(-1, -1, n)))

    def __call__(self, feats, k, ctx=None) -> Reduced:
        return self.reduce(feats, k, ctx)


def group_weights(assign: torch.Tensor, k: int) -> torch.Tensor:
    """assign [B, N] (output slot of each original token, -1 = dropped) -> [B, k, N] uniform weights per
    slot: the size-weighted average of repeated merges equals the plain mean of the originals merged."""
    b, n = assign.shape
    one_hot = torch.zeros(b, k + 1, n, dtype=torch.float32, device=assign.device)
    one_hot.scatter_(1, (assign + 1).clamp_min(0).unsqueeze(1), 1.0)  # slot 0 collects the dropped ones
    w = one_hot[:, 1:]
    return w / w.sum(-1, keepdim=True).clamp_min(1.0)


_REGISTRY: dict[str, Callable[..., VTPMethod]] = {}


def register(name: str):
    """Class decorator: make a VTPMethod available under `name`."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"VTP method '{name}' is registered twice")
        cls.name = name
        cls().required_signals()  # an unknown signal fails at import, not mid-training
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def parse(spec: str) -> tuple[str, dict]:
    """'visionzip:dominant=0.75+x=2' -> ('visionzip', {'dominant': 0.75, 'x': 2})."""
    name, _, opts = spec.partition(":")
    out = {}
    for item in filter(None, opts.split("+")):  # not ",": lmms-eval splits its model_args there
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"VTP option '{item}' in '{spec}' is not key=value")
        if key in out:  # the last value winning silently would run another configuration than the one written
            raise ValueError(f"VTP option '{key}' is given twice in '{spec}'; give it once")
        try:
            out[key] = int(val) if val.lstrip("-").isdigit() else float(val)
        except ValueError:
            out[key] = {"true": True, "false": False}.get(val.lower(), val)
    return name, out


def _option_problem(cls, opts: dict) -> str | None:
    """What is wrong with options for method class `cls`, by its own spec (VTPMethod.options), or None."""
    spec = {} if cls.options is None and cls.__init__ is object.__init__ else cls.options  # no spec, no constructor
    if spec is None:  # no spec declared: the constructor's keywords
        params = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return None
        spec = {p.name: Option("any value", lambda v: True) for p in params
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(opts) - set(spec))
    if unknown:
        takes = "; ".join(f"{k}: {o.allowed}" for k, o in spec.items()) or (
            f"it takes none (use the plain name '{cls.name}'; a method takes those it declares in `options`)")
        return f"does not take options {unknown}; its options: {takes}"
    for key, value in opts.items():
        if not spec[key].ok(value):
            return f"option {key}={value!r} is not {spec[key].allowed}"
    return None


def get(spec: str, **options) -> VTPMethod:
    """Instantiate the method named by `spec` ('name' or 'name:key=value+...'), its options checked by its own spec;
    unknown names list the known ones (KeyError), options the spec refuses say why (ValueError)."""
    name, opts = parse(spec)
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown VTP method '{name}'; known methods: {', '.join(available())}. "
            "To add one, put a file in dualspeed/vtp/ that subclasses VTPMethod (selection) or MergeMethod "
            "with @register('<name>'), or list it in $DUALSPEED_VTP_PLUGINS"
        )
    opts = {**opts, **options}
    why = _option_problem(_REGISTRY[name], opts)
    if why:
        raise ValueError(f"VTP method '{name}' {why}")
    return _REGISTRY[name](**opts)


def check(spec: str, keep: dict[int, str] | None = None) -> VTPMethod:
    """The check of a method spec, the same at plan time and at run time: get(spec), and that the method fits each
    token budget in `keep` (k -> where it comes from, for the message). The model checks k again at every step."""
    method = get(spec)
    for k, where in (keep or {}).items():
        why = method.fits(k)
        if why:
            raise ValueError(f"VTP method '{method.name}': {why} ({where})")
    return method


def keep_count(n_tokens: int, prune_ratio: float) -> int:
    """k = int((1 - p) * N) in float arithmetic, exactly the reference's (llava_arch.py: keep_ratio = 1 - pruning_ratio,
    then int(keep_ratio * N)), float rounding included: 1 - 0.9 = 0.09999999999999998, so N = 100 keeps 9 and
    N = 2880 keeps 287, where exact arithmetic would say 10 and 288. At least one token (the reference would fail at 0)."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune ratio p must be in [0, 1), got {prune_ratio}")
    return max(1, int((1 - prune_ratio) * n_tokens))
