"""Usage: python scripts/cdpruner_relevance_sign.py <run>/hf <synthetic data root> [<CLIP dir>]

Which sign of CDPruner's instruction relevance ranks object patches above background? AUC over (object patch,
background patch) pairs per question, 100 held-out questions a task; 0.5 = chance, > 0.5 = the unnegated
relevance is right. With a CLIP dir (the tiny stand-in's runs/<recipe>/standins/clip/hf, or a checkpoint's
clip_text/), the CLIP text tower's relevance (the source the tiny grid's CDPruner runs read) is measured beside
the LLM-embedding one; compare with the source's default sign in dualspeed/vtp/cdpruner.py."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualspeed.evaluation.predictor import Predictor, Query
from dualspeed.models.signals import llm_relevance

ckpt, data = sys.argv[1], Path(sys.argv[2])
clip = sys.argv[3] if len(sys.argv) > 3 else "none"
pred = Predictor(ckpt, mode="pruned", method="cdpruner", clip_text=clip)  # attaches the CLIP text tower, if named
model = pred.model
aucs = {"llm_instruction_embeddings": [], "clip_text": []}
for task in ("colour", "count", "presence", "position"):
    f = data / f"eval_{task}.json"
    if not f.is_file():
        continue
    for row in json.loads(f.read_text())[:100]:
        img = Image.open(data / row["image"]).convert("RGB")
        ids, pix = pred._encode(Query(row["question"], img))
        images = pred._images([pix])
        t = torch.tensor([ids])
        prompt = t != model.image_token_id
        with torch.no_grad():
            feats, signals = model.encode_images(images["pixel_values"], prune=pred.prune)  # [1, N, D]
            scores = {"llm_instruction_embeddings": llm_relevance(feats, model.embed_tokens(t), prompt.float())[0]}
            if model.clip_text is not None:
                scores["clip_text"] = model.clip_text.relevance(signals["patches"], t, prompt, [1])[0]
        side = int(feats.shape[1] ** 0.5)
        patch = img.size[0] // side
        a = np.asarray(img, dtype=np.float32) / 255
        sat = (a.max(-1) - a.min(-1)).reshape(side, patch, side, patch).mean((1, 3)).flatten()
        obj = torch.tensor(sat > 0.15)  # a coloured square covers the patch; the background is grey
        if obj.sum() == 0 or (~obj).sum() == 0:
            continue
        for source, r in scores.items():
            aucs[source].append(float((r[obj][:, None] > r[~obj][None, :]).float().mean()))
print(json.dumps({"checkpoint": ckpt, "clip_dir": clip,
                  **{s: {"samples": len(v), "auc_object_over_background": round(float(np.mean(v)), 3),
                         "auc_if_negated": round(1 - float(np.mean(v)), 3)} for s, v in aucs.items() if v}}))
