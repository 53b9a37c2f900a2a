"""Golden outputs of DualSpeed's own model code (dingkun-zhang/DualSpeed at FORK_COMMIT: llava_arch.py's splice,
DivPrune and mode isolator; llava_llama.py's fast and slow modes) on a tiny random LLaVA, for
tests/test_golden_dualspeed.py, which compares the project against them without this venv.

    bash scripts/crosscheck/setup.sh                       # the side venv (CROSSCHECK_VENV=/work/xvenv; prints its path)
    <side venv>/bin/python scripts/crosscheck/dualspeed_golden.py --fork-git <DualSpeed clone or bare mirror>

Without --fork-git the fork is cloned from GitHub into a temporary directory. The fork's llava/model tree (and
its constants.py, mm_utils.py) is extracted at FORK_COMMIT over a temporary copy of the installed llava-torch
package, which goes first on sys.path: the reference runs as its own files, and none of it is written into the
project. Only outputs are kept, under tests/golden/dualspeed/:

  model/          the tiny LLaVA's weights in llava-hf naming (config.json, model.safetensors) and the isolator
                  beside them (dualspeed_extra.safetensors, dualspeed.json): what the project's export writes
  inputs.safetensors   ids (the reference's -200 placeholder), mask, labels, pixel codes (pixel = code / 32)
  outputs.safetensors  per dtype (fp32, bf16): splice (embeddings, labels, mask, logits at text positions),
                  fast mode (kept indices, LLM input, labels), gradients of the fast and the slow step; DivPrune at
                  several N (features, kept indices per p)
  golden.json     scalars (losses, keep counts) as exact float reprs, and the provenance
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.machinery
import importlib.metadata as md
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "dualspeed"
FORK_URL = "https://github.com/dingkun-zhang/DualSpeed"
FORK_COMMIT = "99337cb3020057f000cf785d2ce5d2631585f551"
# what is taken from the fork (the rest of llava/ is llava-torch's, byte-identical where both have it)
FORK_PATHS = ["llava/model", "llava/constants.py", "llava/mm_utils.py"]
SEED = 1234
P = 0.9  # the fork hard-codes pruning_ratio = 0.9 in forward
VOCAB, IMAGE_ID = 256, 255  # the project's <image> id: the last row, never a text token on either side
PIXEL_SCALE = 32.0  # pixels are int8 codes / 32: exact in fp32 and bf16, half the bytes of bf16
KEEP_N = [64, 100, 576, 2880]  # 2880 = 5 crops of 576 (a NeXT grid as one sequence); 100 = 10 x 10 patches
KEEP_P = [0.5, 0.75, 0.9, 0.95]  # the recipes' p sweep
GRADS = {  # llava-hf name -> the fork's parameter name
    "multi_modal_projector.linear_1.weight": "model.mm_projector.0.weight",
    "multi_modal_projector.linear_1.bias": "model.mm_projector.0.bias",
    "multi_modal_projector.linear_2.weight": "model.mm_projector.2.weight",
    "multi_modal_projector.linear_2.bias": "model.mm_projector.2.bias",
    "isolator.prompt": "mode_isolator.weight",
    "language_model.lm_head.weight": "lm_head.weight",
    "language_model.model.embed_tokens.weight": "model.embed_tokens.weight",
    "language_model.model.layers.0.self_attn.q_proj.weight": "model.layers.0.self_attn.q_proj.weight",
    "language_model.model.layers.1.mlp.down_proj.weight": "model.layers.1.mlp.down_proj.weight",
}


def sh(*cmd, **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def fork_git(path: str | None, tmp: Path) -> str:
    if path:
        return path
    dst = tmp / "DualSpeed.git"
    sh("git", "clone", "--bare", "--quiet", FORK_URL, str(dst))
    return str(dst)


def reference_package(git_dir: str, tmp: Path) -> dict:
    """The installed llava-torch copied to tmp, the fork's FORK_PATHS extracted over it; tmp first on sys.path."""
    installed = Path(importlib.util.find_spec("llava").submodule_search_locations[0])  # found, not imported
    shutil.copytree(installed, tmp / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", FORK_COMMIT, *FORK_PATHS],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    sys.path.insert(0, str(tmp))
    blobs = {p: sh("git", "--git-dir", git_dir, "rev-parse", f"{FORK_COMMIT}:{p}")
             for p in ("llava/model/llava_arch.py", "llava/model/language_model/llava_llama.py")}
    return {"fork_blobs": blobs}


class WandbStub(types.ModuleType):
    """The fork imports wandb and logs its three losses to it in forward: the stub keeps them (they are outputs)."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # transformers probes find_spec("wandb")
        self.logged: list[dict] = []

    def log(self, d, *a, **k):
        self.logged.append(dict(d))

    def init(self, *a, **k):
        return None


class Forced:
    """Stands in for the `random` module inside llava_llama.py: random.random() is how the fork draws the mode
    (slow below 0.1); forcing it is the only change to the fork's control flow."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


def build_reference(ref, tmp: Path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    clip_dir = tmp / "clip"
    torch.manual_seed(SEED)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=2, image_size=336, patch_size=14, projection_dim=32))
    clip.save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(clip_dir)
    cfg = ref.LlavaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                          rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                          initializer_range=0.1)  # 5x Llama's: logits far enough from uniform for a KL to measure
    torch.manual_seed(SEED + 1)
    model = ref.LlavaLlamaForCausalLM(cfg)
    # as LLaVA's train.py: the vision modules, then (the fork) the isolator, nn.Linear(d, 4)'s weight
    args = types.SimpleNamespace(vision_tower=str(clip_dir), mm_vision_select_layer=-2, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type="mlp2x_gelu")
    torch.manual_seed(SEED + 2)
    model.get_model().initialize_vision_modules(args)
    model.config.image_aspect_ratio = "pad"
    model.config.tokenizer_padding_side = "right"
    model.config.tokenizer_model_max_length = 2048
    torch.manual_seed(SEED + 3)
    model.initialize_mode_isolator()
    model.requires_grad_(True)
    model.get_model().get_vision_tower().requires_grad_(False)  # LLaVA's tower is frozen (load_model)
    return model, clip


def inputs():
    """[image, text-only, image]: the text-only sample between the two images tests which image goes where."""
    g = torch.Generator().manual_seed(SEED + 4)

    def toks(n):
        return torch.randint(3, 250, (n,), generator=g).tolist()

    samples = []
    for kind, parts in (("image", [("p", [1] + toks(12) + [-200] + toks(8)), ("a", toks(5) + [2]),
                                   ("p", toks(5)), ("a", toks(3) + [2])]),
                        ("text", [("p", [1] + toks(12) + toks(10)), ("a", toks(6) + [2])]),
                        ("image", [("p", [1] + toks(12) + [-200] + toks(6)), ("a", toks(8) + [2])])):
        ids = sum((t for _, t in parts), [])
        lab = sum(([-100] * len(t) if w == "p" else t for w, t in parts), [])
        samples.append((kind, ids, lab))
    length = max(len(s[1]) for s in samples)
    ids = torch.zeros(3, length, dtype=torch.long)
    labels = torch.full((3, length), -100, dtype=torch.long)
    mask = torch.zeros(3, length, dtype=torch.long)
    for b, (_, i, lab) in enumerate(samples):
        ids[b, :len(i)], labels[b, :len(i)], mask[b, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    codes = (torch.randn(2, 3, 336, 336, generator=g) * 40).round().clamp(-128, 127).to(torch.int8)
    has_image = torch.tensor([k == "image" for k, _, _ in samples])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_codes": codes, "has_image": has_image}


def images_for_reference(inp, dtype=torch.float32):
    """LLaVA's collator stacks a zero image for a text-only sample of a multimodal batch (train.py, __getitem__)."""
    pix = inp["pixel_codes"].float() / PIXEL_SCALE
    out, i = [], 0
    for has in inp["has_image"].tolist():
        out.append(pix[i] if has else torch.zeros(3, 336, 336))
        i += has
    return torch.stack(out).to(dtype)


class Recorder:
    """Records what the fork's own methods return, calling them unchanged."""

    def __init__(self, model):
        self.splices, self.divprune = [], []
        prep, div = model.prepare_inputs_labels_for_multimodal, model.DivPrune

        def prepare(*a, **k):
            out = prep(*a, **k)
            self.splices.append({"prune": k.get("prune", False), "embeds": out[4].detach().clone(),
                                 "mask": out[2].clone(), "labels": out[5].clone()})
            return out

        def divprune(feats, threshold_ratio):
            idx = div(feats, threshold_ratio)
            self.divprune.append({"feats": feats.detach().clone(), "index": idx.clone()})
            return idx

        model.prepare_inputs_labels_for_multimodal, model.DivPrune = prepare, divprune

    def clear(self):
        self.splices.clear()
        self.divprune.clear()


def text_positions(inp, n_visual: int, length: int) -> torch.Tensor:
    """[B, T'] bool: the spliced positions that hold a text token (not visual, not padding)."""
    out = torch.zeros(inp["input_ids"].shape[0], length, dtype=torch.bool)
    img = (inp["input_ids"] == -200)
    for b in range(out.shape[0]):
        n = int(inp["attention_mask"][b].sum())
        if img[b].any():
            p = int(img[b].nonzero()[0])
            out[b, :p] = True
            out[b, p + n_visual:n - 1 + n_visual] = True
        else:
            out[b, :n] = True
    return out


def grads(model) -> tuple[dict, list]:
    """The gradients of GRADS, and the names of those that got none (the isolator in a slow step)."""
    params = dict(model.named_parameters())
    got = {k: params[v].grad for k, v in GRADS.items()}
    return {k: g.detach().clone() for k, g in got.items() if g is not None}, sorted(k for k, g in got.items() if g is None)


def run_dtype(model, rec, wandb, mod, inp, dtype, tag) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    images = images_for_reference(inp, dtype)
    call = dict(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"], labels=inp["labels"], images=images)
    image_rows = inp["has_image"].nonzero().flatten()  # the dummy image of the text sample is pruned too; dropped
    # 1. splice and loss: eval mode, where the fork neither prunes nor adds the isolator (no dropout in either model)
    model.eval()
    rec.clear()
    with torch.no_grad():
        out = model(**call)
    sp = rec.splices[0]
    assert not sp["prune"] and not rec.divprune
    txt = text_positions(inp, 576, sp["embeds"].shape[1])
    tensors.update({f"{tag}.splice.embeds": sp["embeds"], f"{tag}.splice.labels": sp["labels"],
                    f"{tag}.splice.mask": sp["mask"].long(), f"{tag}.splice.text_positions": txt,
                    f"{tag}.splice.text_logits": out.logits[txt].float()})
    scalars[f"{tag}.splice.loss"] = out.loss.item()
    # 2. fast mode: training, random.random() forced above r = 0.1
    model.train()
    mod.random = Forced(0.99)
    rec.clear()
    wandb.logged.clear()
    model.zero_grad(set_to_none=True)
    out = model(**call)
    out.loss.backward()
    sp = rec.splices[0]
    assert sp["prune"] and len(rec.divprune) == 3 and len(wandb.logged) == 1
    kept = torch.stack([rec.divprune[i]["index"] for i in image_rows.tolist()])
    feats = torch.stack([rec.divprune[i]["feats"] for i in image_rows.tolist()])
    tensors.update({f"{tag}.fast.kept": kept, f"{tag}.fast.embeds": sp["embeds"], f"{tag}.fast.labels": sp["labels"],
                    f"{tag}.fast.mask": sp["mask"].long()})
    # DivPrune's input is the spliced visual rows of step 1 (the same projector output): not stored twice
    splice = tensors[f"{tag}.splice.embeds"]
    for j, b in enumerate(image_rows.tolist()):
        p = int((inp["input_ids"][b] == -200).nonzero()[0])
        assert torch.equal(splice[b, p:p + 576], feats[j]), "DivPrune's input is not the spliced features"
    g, none = grads(model)
    tensors.update({f"{tag}.grad.fast.{k}": v for k, v in g.items()})
    scalars[f"{tag}.grad.fast.none"] = none
    scalars[f"{tag}.fast.loss"] = out.loss.item()
    assert scalars[f"{tag}.fast.loss"] == wandb.logged[0]["teacher_ce_loss"]
    # 3. slow mode: random.random() forced below r; teacher (fast, no grad), student (full), KL, total
    mod.random = Forced(0.0)
    rec.clear()
    wandb.logged.clear()
    model.zero_grad(set_to_none=True)
    out = model(**call)
    out.loss.backward()
    assert [s["prune"] for s in rec.splices] == [True, False] and len(wandb.logged) == 1
    teacher_kept = torch.stack([rec.divprune[i]["index"] for i in image_rows.tolist()])
    tensors[f"{tag}.slow.teacher_kept"] = teacher_kept
    log = wandb.logged[0]
    scalars.update({f"{tag}.slow.teacher_ce": log["teacher_ce_loss"], f"{tag}.slow.student_ce": log["student_ce_loss"],
                    f"{tag}.slow.kl": log["distill_loss"], f"{tag}.slow.total": out.loss.item()})
    g, none = grads(model)
    tensors.update({f"{tag}.grad.slow.{k}": v for k, v in g.items()})
    scalars[f"{tag}.grad.slow.none"] = none
    model.zero_grad(set_to_none=True)
    return tensors, scalars


def keep_counts(model) -> tuple[dict, dict]:
    """The fork's DivPrune itself at several N and p: its int((1 - p) * N) is len(the kept indices)."""
    tensors, counts = {}, {}
    g = torch.Generator().manual_seed(SEED + 5)
    for n in KEEP_N:
        feats = torch.randn(n, 8, generator=g)
        tensors[f"keep.feats.{n}"] = feats
        for p in KEEP_P:
            idx = model.DivPrune(feats, threshold_ratio=1 - p)  # encode_images: keep_ratio = 1 - pruning_ratio
            counts[f"{n}:{p}"] = len(idx)
            tensors[f"keep.kept.{n}.{p}"] = idx
    return tensors, counts


def llava_hf_state(model, clip) -> dict:
    """The fork's names -> llava-hf's (what transformers' LlavaForConditionalGeneration saves)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.vision_tower.vision_tower."):
            out["vision_tower." + k[len("model.vision_tower.vision_tower."):]] = v
        elif k.startswith("model.mm_projector."):
            i, rest = k[len("model.mm_projector."):].split(".", 1)
            out[f"multi_modal_projector.linear_{ {'0': 1, '2': 2}[i] }.{rest}"] = v
        elif k.startswith("model."):
            out["language_model." + k] = v
        elif k == "lm_head.weight":
            out["language_model.lm_head.weight"] = v
        elif k != "mode_isolator.weight":
            raise KeyError(f"unmapped reference weight {k}")
    for k, v in clip.state_dict().items():  # the tower the reference loaded: the same tensors
        assert torch.equal(out["vision_tower." + k], v), k
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_model(model, clip, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlamaConfig as HFLlamaConfig

    c = model.config
    text = HFLlamaConfig(vocab_size=VOCAB, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                         rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, initializer_range=c.initializer_range,
                         pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=clip.config.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
                      projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                      vocab_size=VOCAB, pad_token_id=0)
    state = llava_hf_state(model, clip)
    hf = LlavaForConditionalGeneration(cfg)
    hf.load_state_dict(state, strict=True)  # every llava-hf tensor named, none left over
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    save_file({"isolator.prompt": model.mode_isolator.weight.detach().clone().contiguous()},
              out / "dualspeed_extra.safetensors")
    (out / "dualspeed.json").write_text(json.dumps({"isolator_len": 4, "trained_extras": ["isolator"]}, indent=2) + "\n")
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(out)


def provenance(git_dir: str, extra: dict, files: list[Path]) -> dict:
    versions = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "llava-torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    except subprocess.CalledProcessError:
        head = None
    lock = ROOT / "scripts" / "crosscheck" / "requirements.txt"
    return {
        "reference": FORK_URL, "reference_commit": FORK_COMMIT, "reference_files_from_fork": FORK_PATHS,
        "reference_rest": f"llava-torch {versions.get('llava-torch')} (haotian-liu/LLaVA), installed --no-deps",
        **extra, "side_venv": versions, "side_venv_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest(),
        "python": sys.version.split()[0], "torch_threads": torch.get_num_threads(), "command": " ".join([Path(sys.executable).name] + sys.argv),
        "fork_git_dir_given": git_dir, "project_commit_when_written": head,
        "written_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "changes_to_the_reference": "random.random in llava_llama.py forced (0.99 fast, 0.0 slow); wandb stubbed; "
                                    "prepare_inputs_labels_for_multimodal and DivPrune wrapped to record their outputs",
        "files_sha256": {str(f.relative_to(OUT)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fork-git", help="a clone or bare mirror of dingkun-zhang/DualSpeed holding FORK_COMMIT")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    torch.set_num_threads(1)  # one fixed reduction order for the CPU kernels
    out = Path(a.out)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        git_dir = fork_git(a.fork_git, tmp)
        extra = reference_package(git_dir, tmp)
        wandb = WandbStub()
        sys.modules["wandb"] = wandb
        import llava.model.language_model.llava_llama as mod  # noqa: E402  the fork's file, from tmp

        assert Path(mod.__file__).is_relative_to(tmp), mod.__file__
        model, clip = build_reference(mod, tmp)
        extra["attention"] = {"llm": model.config._attn_implementation,
                              "vision": getattr(model.get_model().get_vision_tower().vision_tower.config,
                                                "_attn_implementation", None)}
        rec = Recorder(model)
        inp = inputs()
        tensors = {"input_ids": inp["input_ids"], "attention_mask": inp["attention_mask"], "labels": inp["labels"],
                   "pixel_codes": inp["pixel_codes"], "has_image": inp["has_image"]}
        scalars = {}
        if out.exists():
            shutil.rmtree(out)
        write_model(model, clip, out / "model")
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            model.to(dtype)
            t_, s_ = run_dtype(model, rec, wandb, mod, inp, dtype, tag)
            tensors.update(t_)
            scalars.update(s_)
        model.to(torch.float32)
        kt, counts = keep_counts(model)
        tensors.update(kt)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items() if not k.startswith(("input", "attention", "labels",
                                                                                      "pixel", "has_image"))},
                  out / "outputs.safetensors")
        save_file({k: tensors[k].contiguous() for k in ("input_ids", "attention_mask", "labels", "pixel_codes",
                                                        "has_image")}, out / "inputs.safetensors")
        files = sorted(p for p in out.rglob("*") if p.is_file())
        meta = {"scalars": scalars, "keep_counts": counts, "p": P, "image_token_reference": -200,
                "image_token_project": IMAGE_ID, "pixel_scale": PIXEL_SCALE,
                "provenance": provenance(git_dir if a.fork_git else FORK_URL, extra, files)}
        (out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    for k, v in scalars.items():
        print(f"  {k} = {v!r}")


if __name__ == "__main__":
    main()
