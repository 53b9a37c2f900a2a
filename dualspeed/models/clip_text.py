"""CLIP's text tower as the source of the `relevance` signal (CDPruner's), held beside the LLaVA model.

Where the vision tower is a CLIP that ships with its text tower (the real recipes' openai/clip-vit-large-
patch14-336 is the whole CLIPModel repo: text tower, projections, tokenizer), a visual token's relevance
to the instruction is scored in CLIP's joint image-text space, as CDPruner's published code does: the
features LLaVA already took from the tower (its feature layer, the penultimate for the real recipes,
before the projector) go through the tower's own post_layernorm and CLIP's visual_projection; each human
turn of the prompt goes through CLIPTextModelWithProjection (cut to CLIP's 77 positions); a token's
relevance is its cosine similarity to the turns, averaged over them. No second vision-tower pass.

Which CLIP: the run config's `model.clip_text` (see `resolve`):
  auto   (default) model.source=compose: the vision tower's own repo (`model.vision_tower`);
         llava: the `clip_text/` an earlier stage exported beside that checkpoint, if there is one;
         tiny: none (its random CLIP has no text tower)
  none   score against the LLM's instruction embeddings instead (signals.py: llm_relevance)
  other  a hub id or directory: a CLIPModel repo, or an exported clip_text/

A configured CLIP that cannot be read is a ConfigError naming the key before any weights are loaded.
An export carries the CLIP text side it used, or would use, in `clip_text/` (text tower, visual
projection, tokenizer: about 250 MB in bf16 for CLIP-L), so the next stage and the offline evaluation
read it from the checkpoint, not from the hub.

Loaded once per process, frozen and kept out of the model's parameters (ZeRO-3, DDP, the optimizer and
the llava-hf export never see it); it follows the features to their device on first use.
"""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError

CLIP_DIR = "clip_text"  # beside an export's llava-hf files
WEIGHTS = "clip_text.safetensors"  # an exported clip_text/: only the text tower and the visual projection
KEY = "model.clip_text"
FIX = (f"set {KEY} to a CLIP repo that has its text tower (a hub id or a directory with a config.json of "
       f"model_type 'clip', its weights and its tokenizer), or {KEY}: none to score relevance against the LLM's "
       "instruction embeddings")
EVAL_HELP = ("CLIP text tower for a method that reads relevance (CDPruner): auto = the one the checkpoint carries, "
             "none = the LLM's instruction embeddings, or a CLIP repo / exported clip_text/ dir")
_WEIGHT_FILES = (WEIGHTS, "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_ROLE = re.compile(r"\b(user|assistant)\s*:", re.IGNORECASE)


def resolve(model_cfg) -> tuple[str | None, str]:
    """The run config's model section -> (the CLIP to read, or None for the LLM embeddings; how it was chosen)."""
    value = (model_cfg.clip_text or "none").strip()
    if value.lower() == "none":
        return None, "none"
    if value.lower() != "auto":
        return value, repr(value)
    if model_cfg.source == "compose":
        tower = model_cfg.vision_tower
        return tower, f"'auto': model.source=compose reads the vision tower's repo {tower!r}"
    exported = Path(model_cfg.path or "") / CLIP_DIR
    if model_cfg.source == "llava" and (exported / "config.json").is_file():
        return str(exported), f"'auto': the checkpoint's own {exported}"
    return None, "auto"


def for_checkpoint(ckpt: str | Path, choice: str = "auto") -> str | None:
    """Evaluation: the CLIP an export carries (auto), none, or the one named."""
    if choice.strip().lower() == "none":
        return None
    if choice.strip().lower() != "auto":
        return choice
    d = Path(ckpt) / CLIP_DIR
    return str(d) if (d / "config.json").is_file() else None


def check(where: str, how: str) -> None:
    """Fail now, naming the key and the fix, unless `where` holds a CLIP config with a text tower, weights
    and a tokenizer. Reads no weights (offline, a hub id must be in the cache, like the vision tower)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import has_file

    def fail(why: str):
        raise ConfigError(f"config key '{KEY}' is {how}: {why}. Fix: {FIX}")

    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        fail(f"no CLIP config can be read from {where!r} ({str(e).splitlines()[0]})")
    if config.model_type != "clip":
        fail(f"{where!r} is a '{config.model_type}' checkpoint, not a CLIP with its text tower")
    if not any(has_file(where, n) for n in _WEIGHT_FILES):  # a HEAD request or the cache: nothing downloaded
        fail(f"{where!r} has no weights ({', '.join(_WEIGHT_FILES)})")
    try:
        AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, TypeError) as e:
        fail(f"{where!r} has no CLIP tokenizer ({str(e).splitlines()[0]})")


def human_turns(prompt: str) -> list[str]:
    """The user's turns of a decoded vicuna_v1 prompt: the system prompt before the first role tag and the
    role tags go; answers were never in it (only prompt tokens are decoded). A prompt without role tags
    is one turn; an empty one (the plain pretraining template) none."""
    parts = _ROLE.split(prompt)
    if len(parts) == 1:
        return [prompt.strip()] if prompt.strip() else []
    return [t.strip() for role, t in zip(parts[1::2], parts[2::2]) if role.lower() == "user" and t.strip()]


class ClipText:
    """CLIP's text tower and visual projection, frozen; `bind` it to a model before use."""

    def __init__(self, config, state: dict, tokenizer, origin: str, dtype=torch.float32):
        from transformers import CLIPTextModelWithProjection

        tc = copy.deepcopy(config.text_config)
        tc.projection_dim = config.projection_dim  # the joint space's width lives on the CLIPConfig
        self.config, self.tokenizer, self.origin = config, tokenizer, origin
        with torch.random.fork_rng(devices=[]):  # their throwaway init must not move the run's seeded RNG
            self.text = CLIPTextModelWithProjection(tc)
            self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text.load_state_dict({k: v for k, v in state.items() if k.startswith(("text_model.", "text_projection."))})
        self.visual_projection.load_state_dict({"weight": state["visual_projection.weight"]})
        for m in (self.text, self.visual_projection):
            m.requires_grad_(False).eval().to(dtype)
        self.max_length = min(int(tokenizer.model_max_length), tc.max_position_embeddings)
        self.llm_tokenizer = None
        self.post_layernorm = None

    @classmethod
    def load(cls, where: str, dtype=torch.float32) -> "ClipText":
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel

        config = CLIPConfig.from_pretrained(where)
        tokenizer = AutoTokenizer.from_pretrained(where)
        own = Path(where) / WEIGHTS
        if own.is_file():  # an exported clip_text/
            with safe_open(own, "pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                origin = (f.metadata() or {}).get("origin", where)
        else:  # a whole CLIP repo: read once, keep the text side and the projection
            with torch.random.fork_rng(devices=[]):  # from_pretrained draws for its init too
                full = CLIPModel.from_pretrained(where, torch_dtype=dtype)
            state = {k: v for k, v in full.state_dict().items()
                     if k.startswith(("text_model.", "text_projection.", "visual_projection."))}
            del full
            origin = where
        return cls(config, state, tokenizer, origin, dtype)

    def save(self, dest: str | Path) -> None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(dest)
        self.tokenizer.save_pretrained(dest)
        state = {**self.text.state_dict(), "visual_projection.weight": self.visual_projection.weight}
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, dest / WEIGHTS,
                  metadata={"origin": self.origin})

    def bind(self, llm_tokenizer, post_layernorm: nn.Module, width: int) -> "ClipText":
        """Attach to a model: its tokenizer (to read the prompt back), its tower's post_layernorm (CLIP's
        own, kept with the tower as CDPruner does) and its feature width, checked against this CLIP's."""
        if width != self.visual_projection.in_features:
            raise ConfigError(f"config key '{KEY}' names a CLIP ({self.origin}) whose vision width "
                              f"{self.visual_projection.in_features} is not the vision tower's {width}: it is "
                              f"another CLIP. Fix: {FIX}")
        self.llm_tokenizer, self.post_layernorm = llm_tokenizer, post_layernorm
        return self

    def _follow(self, device) -> None:
        if self.visual_projection.weight.device != device:
            self.text.to(device)
            self.visual_projection.to(device)

    @torch.no_grad()
    def relevance(self, patches: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, crops: list[int]) -> torch.Tensor:
        """patches [C, N, Dv] (the tower's features LLaVA projects), the prompt ids [I, T] of the I image
        samples with mask [I, T] (prompt tokens, no image placeholder), crops per image -> [C, N] float32,
        zero for a crop whose prompt has no instruction (flat: CDPruner's q is then 1)."""
        self._follow(patches.device)
        c, n, _ = patches.shape
        dtype = self.visual_projection.weight.dtype
        img = self.visual_projection(self.post_layernorm(patches).to(dtype)).float()
        img = img / img.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [C, N, P]
        turns = [human_turns(self.llm_tokenizer.decode(row[m], skip_special_tokens=True)) for row, m in zip(ids, mask)]
        flat = [t for ts in turns for t in ts]
        if not flat:
            return img.new_zeros(c, n)
        tok = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        txt = self.text(input_ids=tok.input_ids.to(patches.device),
                        attention_mask=tok.attention_mask.to(patches.device)).text_embeds.float()
        txt = txt / txt.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [all turns, P]
        # every image's turns in one zero-padded row, then one row per crop: one batched product, no loop
        m = max(len(ts) for ts in turns)
        per_image = txt.new_zeros(len(turns), max(m, 1), txt.shape[1])
        have = torch.zeros(len(turns), max(m, 1), dtype=torch.bool, device=txt.device)
        start = 0
        for i, ts in enumerate(turns):
            per_image[i, :len(ts)], have[i, :len(ts)] = txt[start:start + len(ts)], True
            start += len(ts)
        reps = torch.tensor(crops, device=txt.device)
        per_crop, have = per_image.repeat_interleave(reps, 0), have.repeat_interleave(reps, 0).float()
        sim = torch.einsum("cnp,cmp->cnm", img, per_crop)
        return (sim * have[:, None]).sum(-1) / have.sum(-1, keepdim=True).clamp_min(1.0)


def export(where: str, dest: Path, loaded: ClipText | None, dtype) -> None:
    """Write the CLIP text side into an export's clip_text/: from memory when loaded, a copy when `where`
    already is an exported one, else read once from the repo."""
    if loaded is not None:
        loaded.save(dest)
    elif (Path(where) / WEIGHTS).is_file():
        shutil.copytree(where, dest)
    else:
        ClipText.load(where, dtype).save(dest)
