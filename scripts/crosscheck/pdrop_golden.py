"""Golden outputs of PyramidDrop's own code (github Cooperx521/PyramidDrop) on a tiny random LLaVA LLM and fixed
batches, for tests/test_pdrop_golden.py. Runs in the side venv (transformers 4.37.2, as the reference pins),
never in CI; nothing of the reference is committed, it is read from a checkout at run time.

    git -C <mirror of Cooperx521/PyramidDrop> archive HEAD llava | tar -x -C /tmp/pdrop_ref
    PYTHONPATH=/tmp/pdrop_ref /work/xvenv/bin/python scripts/crosscheck/pdrop_golden.py \
        --ref /tmp/pdrop_ref --commit <its HEAD> --out tests/golden/pdrop

What runs is the reference's LlavaLlamaForCausalLM_PDrop.forward (its pdrop_forward and pdrop_rank_drop, its loss)
on spliced sequences: text embeddings with an image's visual tokens in place of the placeholder, set up as its
prepare_inputs_labels_for_multimodal_pdrop sets them (image_token_posi, prompt_len, image_tokens). Its training
runs flash attention, the one path on which pdrop_forward and pdrop_rank_drop work (under eager or SDPA attention
pdrop_forward hands the ranking a 4D mask, which it cannot take, and rebuilds the 4D mask for the original length
after a drop): the shim keeps that path (2D masks through pdrop_forward and pdrop_rank_drop) and lets each
decoder layer expand its 2D mask to the causal-and-padding 4D mask eager attention needs. The kept indices are read off each drop by matching the
rebuilt rows against the stage's input rows (the drop copies them), so the reference's functions run unchanged.

Written: weights.safetensors (the LLM's state dict and the fixed inputs, loaded by the project side too) and
golden.json (per batch: each stage's kept positions per sample, the rebuilt position ids, the loss or the last
position's logits; provenance).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=128, rms_norm_eps=1e-6)
LAYERS, RATIOS = [1, 2, 3], [0.5, 0.25, 0.125]  # the tiny recipe's split: after layers 1, 2, 3 of 4, lam 0.5
N_VIS = 16  # visual tokens per image
IGNORE = -100


def batches(g: torch.Generator):
    """Two fixed batches as token ids with one image placeholder (-200, LLaVA's IMAGE_TOKEN_INDEX) and labels.

    train: a multi-turn image sample (three answer spans), a one-turn image sample, a text-only sample;
    infer: two image prompts of different lengths (the last prompt token ranks), no labels."""
    r = lambda n: torch.randint(3, SIZES["vocab_size"], (n,), generator=g).tolist()  # noqa: E731
    img = [-200]

    def turns(prompt, spans):
        ids, labels = list(prompt), [IGNORE] * len(prompt)
        for q, a in spans:
            qs, ans = r(q), r(a)
            ids += qs + ans
            labels += [IGNORE] * q + ans
        return ids, labels

    train = [turns(r(2) + img + r(4), [(3, 3), (4, 2), (2, 4)]),
             turns(r(1) + img + r(6), [(2, 5)]),
             turns(r(5), [(3, 4), (2, 2)])]
    infer = [(r(3) + img + r(5), None), (r(2) + img + r(9), None)]
    return {"train": train, "infer": infer}


def splice(embed, rows, g):
    """Token ids with a placeholder -> right-padded inputs_embeds, mask, labels, and what the reference's
    prepare_inputs_labels_for_multimodal_pdrop records (image position, prompt length, image tokens)."""
    seqs, labs, posi, prompt_len, n_img = [], [], [], [], []
    for ids, labels in rows:
        ids_t = torch.tensor(ids)
        where = (ids_t == -200).nonzero().flatten().tolist()
        text = embed(ids_t.clamp(min=0))
        lab = torch.tensor(labels) if labels is not None else torch.full((len(ids),), IGNORE)
        if where:
            p = where[0]
            vis = torch.randn(N_VIS, SIZES["hidden_size"], generator=g)  # the projector's output for one image
            text = torch.cat([text[:p], vis, text[p + 1:]])
            lab = torch.cat([lab[:p], torch.full((N_VIS,), IGNORE), lab[p + 1:]])
            posi.append(p)
            prompt_len.append(len(ids) - 1)
            n_img.append(N_VIS)
        else:
            posi.append(-1)
            prompt_len.append(len(ids))
            n_img.append(0)
        seqs.append(text)
        labs.append(lab)
    t = max(s.shape[0] for s in seqs)
    emb = torch.zeros(len(seqs), t, SIZES["hidden_size"])
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    lab_out = torch.full((len(seqs), t), IGNORE)
    for b, (s, lab) in enumerate(zip(seqs, labs)):
        emb[b, :s.shape[0]], mask[b, :s.shape[0]], lab_out[b, :s.shape[0]] = s, 1, lab
    return emb, mask, lab_out, {"image_token_posi": posi, "prompt_len": prompt_len, "image_tokens": n_img}


def record_drops(inner, trace: list):
    """Wrap the reference's pdrop_rank_drop: after each call, which of the stage's visual rows each sample kept."""
    original = inner.pdrop_rank_drop

    def wrapped(cur_num, rank_layer, features, position_ids, attention_mask, labels):
        out = original(cur_num=cur_num, rank_layer=rank_layer, features=features, position_ids=position_ids,
                       attention_mask=attention_mask, labels=labels)
        new_pos, _, new_feats, _ = out
        kept = []
        for i, start in enumerate(inner.image_token_posi):
            if start == -1:
                kept.append(None)
                continue
            n_now = int(inner.image_tokens[i] * inner.image_token_ratio_list[cur_num])
            n_next = int(inner.image_tokens[i] * inner.image_token_ratio_list[cur_num + 1])
            before = features[i, start:start + n_now]
            after = new_feats[i, start:start + n_next]
            match = (after[:, None, :] == before[None, :, :]).all(-1)  # [kept, before]
            assert bool((match.sum(1) == 1).all()), "a kept row matches no single input row"
            kept.append((match.float().argmax(1) + start).tolist())
        trace.append({"layer": rank_layer, "kept": kept, "position_ids": new_pos.tolist()})
        return out

    inner.pdrop_rank_drop = wrapped


def shim_flash(inner):
    """Run the reference's flash-attention path on a CPU: pdrop_forward and pdrop_rank_drop see the 2D mask (or None
    without padding) exactly as under flash attention, and each decoder layer turns it into the causal-and-padding
    4D mask of its own length for eager attention."""
    from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask

    inner._use_flash_attention_2, inner._use_sdpa = True, False
    for layer in inner.layers:
        original = layer.forward

        def forward(hidden_states, attention_mask=None, *args, _original=original, **kw):
            b, t = hidden_states.shape[:2]
            mask2d = attention_mask if attention_mask is not None else torch.ones(b, t, dtype=torch.long)
            return _original(hidden_states, _prepare_4d_causal_attention_mask(mask2d, (b, t), hidden_states, 0),
                             *args, **kw)

        layer.forward = forward


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the directory holding the reference's llava/ package")
    ap.add_argument("--commit", required=True, help="the reference commit the files come from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    sys.path.insert(0, a.ref)
    import transformers
    from safetensors.torch import save_file

    from llava.model.language_model.llava_llama_pdrop import LlavaConfig, LlavaLlamaForCausalLM_PDrop

    torch.manual_seed(a.seed)
    cfg = LlavaConfig(**SIZES, attn_implementation="eager")
    cfg._attn_implementation = "eager"  # the one attention path a CPU and FlopCounter-free check share
    model = LlavaLlamaForCausalLM_PDrop(cfg).float()
    with torch.no_grad():  # a random model whose attention is not flat: larger weights than the init's 0.02
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    inner = model.model
    shim_flash(inner)
    inner.layer_list = list(LAYERS)
    inner.image_token_ratio_list = [1.0] + list(RATIOS)
    g = torch.Generator().manual_seed(a.seed + 1)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    golden = {}
    for name, rows in batches(g).items():
        emb, mask, labels, setup = splice(model.get_model().embed_tokens, rows, g)
        emb = emb.detach()
        for k, v in setup.items():
            setattr(inner, k, v)
        trace: list = []
        record_drops(inner, trace)
        training = name == "train"
        model.train(training)
        with torch.no_grad():
            out = model(inputs_embeds=emb, attention_mask=mask, labels=labels if training else None, return_dict=True)
        del inner.pdrop_rank_drop  # back to the class's own method
        vision = torch.zeros_like(mask, dtype=torch.bool)
        for b, (p, n) in enumerate(zip(setup["image_token_posi"], setup["image_tokens"])):
            if p >= 0:
                vision[b, p:p + n] = True
        tensors.update({f"{name}.inputs_embeds": emb, f"{name}.attention_mask": mask, f"{name}.labels": labels,
                        f"{name}.vision": vision.to(torch.int8)})
        res = {"stages": trace, **setup}
        if training:
            res["loss"] = float(out.loss)
        else:  # each sample's last real position after the last drop: what generation's first token reads
            last = [max(row) for row in trace[-1]["position_ids"]]  # positions run 0..len-1, then padding's 0s
            res["last_logits"] = [out.logits[b, last[b]].tolist() for b in range(emb.shape[0])]
        golden[name] = res
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "weights.safetensors")
    golden["provenance"] = {
        "reference": "https://github.com/Cooperx521/PyramidDrop", "commit": a.commit,
        "files": ["llava/model/modeling_llama_pdrop.py (LlamaModel.pdrop_forward, LlamaModel.pdrop_rank_drop)",
                  "llava/model/language_model/llava_llama_pdrop.py (LlavaLlamaForCausalLM_PDrop.forward)"],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "command": "PYTHONPATH=<ref> python scripts/crosscheck/pdrop_golden.py --ref <ref> --commit <commit> "
                   f"--out {a.out} --seed {a.seed}",
        "model": {**SIZES, "attn_implementation": "eager", "dtype": "float32", "weights": "N(0, 0.3^2), seed "
                  f"{a.seed}"},
        "pdrop": {"layer_list": LAYERS, "image_token_ratio_list": RATIOS, "visual_tokens": N_VIS},
        "shim": "flash attention's mask path, eager attention in the layers (see this script's docstring)",
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps({k: (v.get("loss"), [s["kept"] for s in v["stages"]]) for k, v in golden.items()
                      if k != "provenance"}, indent=1))


if __name__ == "__main__":
    main()
