"""The LLM stand-in: a tiny Llama trained on text alone, as Vicuna was: never an image, a projector or a visual
token. Prose documents train every token; chat documents train the answers (Vicuna's chat tuning)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ...data.conversation import IGNORE, IMAGE_TOKEN, build_prompt
from ...models.standins import new_llm
from .config import StandinConfig
from .loop import fit


def encode(tokenizer, doc: dict, max_len: int) -> tuple[list[int], list[int]]:
    if "text" in doc:
        ids = [tokenizer.bos_token_id] + tokenizer(doc["text"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        labels = [IGNORE] + ids[1:]
    else:
        ids, labels = build_prompt(tokenizer, doc["conversations"], "vicuna_v1")
    return ids[:max_len], labels[:max_len]


def read_documents(cfg: StandinConfig, tokenizer) -> tuple[list[tuple[list[int], list[int]]], list[str]]:
    docs = json.loads(Path(cfg.data).read_text())
    out, kinds = [], []
    for i, d in enumerate(docs):
        if not isinstance(d, dict) or not ({"text", "conversations"} & d.keys()):
            raise ValueError(f"{cfg.data}: document #{i} must hold 'text' or 'conversations'")
        if IMAGE_TOKEN in json.dumps(d):  # the stand-in's whole point: it has never seen an image
            raise ValueError(f"{cfg.data}: document #{i} holds {IMAGE_TOKEN}; the LLM stand-in is trained on text alone")
        out.append(encode(tokenizer, d, cfg.tiny.max_positions))
        kinds.append(d.get("kind", ""))
    return out, kinds


def collate(docs: list, pad: int):
    n = max(len(ids) for ids, _ in docs)
    ids = torch.full((len(docs), n), pad)
    labels = torch.full((len(docs), n), IGNORE)
    mask = torch.zeros((len(docs), n), dtype=torch.long)
    for b, (x, y) in enumerate(docs):
        ids[b, :len(x)], labels[b, :len(x)], mask[b, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


def lm_loss(model, batch) -> torch.Tensor:
    ids, mask, labels = batch
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def train(cfg: StandinConfig, out: Path) -> tuple[dict, dict]:
    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    docs, kinds = read_documents(cfg, tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    model = new_llm(cfg.tiny, tokenizer, t.seed)
    per_epoch = max(1, len(docs) // t.batch_size)
    total = t.max_steps if t.max_steps > 0 else max(1, round(t.epochs * per_epoch))
    rng = random.Random(t.seed)
    fed = {"tokens": 0, "image_tokens": 0}

    repeat = [i for i, k in enumerate(kinds) if k == "repeat"]
    if t.copy_steps and not repeat:
        raise ValueError(f"{cfg.data}: train.copy_steps={t.copy_steps} needs documents of kind 'repeat'; there are none")

    def batches():
        gen = torch.Generator().manual_seed(t.seed)
        for _ in range(min(t.copy_steps, total)):
            idx = [repeat[i] for i in torch.randint(len(repeat), (t.batch_size,), generator=gen)]
            yield count(collate([docs[i] for i in idx], tokenizer.pad_token_id))
        # then the whole corpus, in length-grouped megabatches of 50 batches: little padding, the order random
        while True:
            order = rng.sample(range(len(docs)), len(docs))
            queue = []
            for m in range(0, len(order), 50 * t.batch_size):
                mega = sorted(order[m:m + 50 * t.batch_size], key=lambda i: len(docs[i][0]))
                queue += [mega[j:j + t.batch_size] for j in range(0, len(mega), t.batch_size)]
            rng.shuffle(queue)
            for idx in queue:
                yield count(collate([docs[i] for i in idx], tokenizer.pad_token_id))

    def count(batch):
        fed["tokens"] += int(batch[1].sum())
        fed["image_tokens"] += int((batch[0][batch[1].bool()] == image_id).sum())
        return batch

    stats = fit(model, batches(), lm_loss, total, t, out, "LLM stand-in (text)")
    hf = out / "hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    saw = {"documents": len(docs), "tokens_trained": fed["tokens"], "image_tokens": fed["image_tokens"], "images": 0}
    return stats, saw
