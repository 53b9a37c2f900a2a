"""Usage: python scripts/cdpruner_relevance_sign.py <run>/hf <synthetic data root>

Does the instruction relevance of CDPruner (LLM-embedding path) rank object patches above background?
AUC over (object patch, background patch) pairs per sample; 0.5 = chance, > 0.5 = sign kept is right."""
import json, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualspeed.evaluation.predictor import Predictor, Query
from dualspeed.vtp.cdpruner import cosine

ckpt, data = sys.argv[1], Path(sys.argv[2])
pred = Predictor(ckpt, mode="normal")
model = pred.model
aucs = []
for task in ("colour", "count", "presence", "position"):
    f = data / f"eval_{task}.json"
    if not f.is_file():
        continue
    for row in json.loads(f.read_text())[:100]:
        img = Image.open(data / row["image"]).convert("RGB")
        ids, pix = pred._encode(Query(row["question"], img))
        images = pred._images([pix])
        with torch.no_grad():
            feats = model.encode_images(images["pixel_values"])  # [1, N, D]
            t = torch.tensor([ids])
            emb = model.embed_tokens(t)
            mask = (t != model.image_token_id).float()
            r = ((cosine(feats, emb) * mask[:, None]).sum(-1) / mask.sum())[0]  # [N]
        n = r.shape[0]
        side = int(n ** 0.5)
        a = np.asarray(img.resize((side * 4, side * 4)), dtype=np.float32) / 255
        sat = (a.max(-1) - a.min(-1)).reshape(side, 4, side, 4).mean((1, 3)).flatten()
        obj = torch.tensor(sat > 0.15)
        if obj.sum() == 0 or (~obj).sum() == 0:
            continue
        ro, rb = r[obj], r[~obj]
        aucs.append(float((ro[:, None] > rb[None, :]).float().mean()))
print(json.dumps({"checkpoint": ckpt, "samples": len(aucs), "auc_object_over_background": float(np.mean(aucs)),
                  "auc_if_negated": 1 - float(np.mean(aucs))}))
