"""The training data set (tokenised conversations with their images) and the collator that batches it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from .conversation import IGNORE, build_prompt, image_first
from .images import check_aspect, default_aspect, load_image, stack_images
from .samples import DataError, load_samples

# An item is a pure function of its sample (no augmentation), and a small data set is read once an epoch: the tiny
# recipe's stage 1 decodes, pads and normalises each of its 3,000 images six times (9% of its training loop in a
# profile). A data set whose items fit in ITEM_CACHE_BYTES is kept in memory; at the first item past the budget the
# cache is dropped for good, so LLaVA's own (558k images of 336 px) is read as before, holding at most the budget
# once. Only the training process caches: DataLoader workers (the 7B recipes' 4) start afresh every epoch, so a
# worker's cache would be memory spent for no second read.
ITEM_CACHE_BYTES = 256 << 20


class LlavaDataset(Dataset):
    def __init__(self, json_path, image_folder, tokenizer, processor, template="vicuna_v1", max_length=2048,
                 image_aspect_ratio=None, plain_end="newline", image_first=True, rows: list[dict] | None = None):
        image_aspect_ratio = image_aspect_ratio or default_aspect(processor)
        check_aspect(processor, image_aspect_ratio)
        # rows: samples already checked (dualspeed.data.check); otherwise read and validated here
        self.rows = rows if rows is not None else load_samples(json_path, image_folder)
        self.image_folder = Path(image_folder)
        self.tokenizer, self.processor = tokenizer, processor
        self.template, self.max_length = template, max_length
        self.image_aspect_ratio, self.plain_end, self.image_first = image_aspect_ratio, plain_end, image_first
        self._cache: dict[int, dict] = {}
        self._cache_bytes = 0
        self._caching = True  # until an item does not fit

    def __len__(self):
        return len(self.rows)

    def modality_lengths(self) -> list[int]:
        """Words per sample (LLaVA's cheap length proxy), negative for text-only samples."""
        out = []
        for s in self.rows:
            n = max(1, sum(len(t["value"].split()) for t in s["conversations"]))
            out.append(n if "image" in s else -n)
        return out

    def __getitem__(self, i):
        item = self._cache.get(i)
        if item is None:
            item = self._read(i)
            if self._caching:
                self._keep(i, item)
        return dict(item)  # the collator copies the tensors into its batch; a new dict keeps the cached one whole

    def _keep(self, i: int, item: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in item.values())
        if get_worker_info() is None and self._cache_bytes + size <= ITEM_CACHE_BYTES:
            self._cache[i], self._cache_bytes = item, self._cache_bytes + size
        else:  # a worker, or a data set that does not fit whole: a part of it would not save an epoch's reads
            self._cache.clear()
            self._caching, self._cache_bytes = False, 0

    def _read(self, i):
        s = self.rows[i]
        conv = image_first(s["conversations"]) if self.image_first else s["conversations"]
        ids, labels = build_prompt(self.tokenizer, conv, self.template, plain_end=self.plain_end)
        # the text alone is cut here as LLaVA's collator does; with truncate=spliced the model cuts again
        # once the visual tokens are in (DualSpeedLlava.max_length)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if "image" in s:
            try:
                item.update(load_image(self.image_folder / s["image"], self.processor, self.image_aspect_ratio))
            except (OSError, ValueError) as e:  # a file that changed or broke after the pre-run check
                raise DataError(f"sample #{i} (id={s.get('id', '?')}): cannot read image "
                                f"{self.image_folder / s['image']}: {e}") from e
        return item


@dataclass
class Collator:
    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, it in enumerate(items):
            L = len(it["input_ids"])
            ids[b, :L], mask[b, :L], labels[b, :L] = it["input_ids"], 1, it["labels"]
        has_image = torch.tensor(["pixel_values" in it for it in items])
        images = stack_images([it for it in items if "pixel_values" in it])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "has_image": has_image, **images}
