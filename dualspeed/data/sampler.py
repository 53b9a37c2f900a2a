"""LLaVA-1.5's SFT batching: batches of one modality, samples of similar length together.

Image and text-only samples are each shuffled and cut into megabatches of one global batch (per-device
batch x devices x accumulation steps); each megabatch is sorted by length, longest first, and dealt into
one chunk per device-step with balanced total length. The megabatches of both modalities are shuffled
together, and the two modalities' last megabatches (usually partial) form one final batch group at the end
of the epoch, in index order - the only place where the modalities can meet, as in the reference
(llava/train/llava_trainer.py, get_modality_length_grouped_indices).

Lengths are LLaVA's cheap proxy, words per sample, negative for a text-only sample.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


def balanced_chunks(indices: list[int], lengths: list[int], n: int) -> list[list[int]]:
    """Deal length-sorted indices into n equal-sized chunks, each to the chunk with the least total length
    so far; a megabatch that does not divide evenly is dealt round robin."""
    if len(indices) % n:
        return [indices[i::n] for i in range(n)]
    size = len(indices) // n
    chunks: list[list[int]] = [[] for _ in range(n)]
    totals = [0.0] * n
    for i in indices:
        c = totals.index(min(totals))
        chunks[c].append(i)
        totals[c] += lengths[i]
        if len(chunks[c]) == size:
            totals[c] = float("inf")
    return chunks


def length_grouped(lengths: list[int], megabatch: int, n_chunks: int, gen: torch.Generator) -> list[int]:
    """A random permutation whose consecutive megabatches are sorted longest first and dealt into chunks."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    out: list[int] = []
    for start in range(0, len(perm), megabatch):
        mb = sorted(perm[start:start + megabatch], key=lambda i: lengths[i], reverse=True)
        out += [i for chunk in balanced_chunks(mb, lengths, n_chunks) for i in chunk]
    return out


def modality_grouped(lengths: list[int], batch_size: int, n_chunks: int, gen: torch.Generator) -> list[int]:
    """Indices for one epoch; lengths > 0 for image samples, < 0 for text-only ones."""
    if any(v == 0 for v in lengths):
        raise ValueError("modality lengths must be non-zero: positive for image samples, negative for text-only")
    megabatch = batch_size * n_chunks
    if all(v > 0 for v in lengths) or all(v < 0 for v in lengths):
        return length_grouped([abs(v) for v in lengths], megabatch, n_chunks, gen)
    groups = []
    for sign in (1, -1):
        idx = [i for i, v in enumerate(lengths) if v * sign > 0]
        order = [idx[j] for j in length_grouped([abs(lengths[i]) for i in idx], megabatch, n_chunks, gen)]
        groups.append([order[s:s + megabatch] for s in range(0, len(order), megabatch)])
    (image_mbs, text_mbs) = groups
    tail = sorted(image_mbs[-1] + text_mbs[-1])
    full = image_mbs[:-1] + text_mbs[:-1]
    full = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
    return [i for mb in full + [tail] for i in mb]


class GlobalBatchSampler(Sampler):
    """The training order: one epoch cut into whole global batches, the same on any process count.

    Accelerate hands per-device batch k of this order to rank k mod world size, and the Trainer accumulates each
    rank's consecutive batches, so optimizer step s trains samples [s*G, (s+1)*G) of it whether G is split as 2
    processes x 1 accumulation step or 1 process x 2 - and a run resumed on another process count skips exactly
    the steps it trained. The order is a pure function of (seed, epoch): LLaVA's modality-grouped batches when
    `lengths` is given (megabatch = one global batch), else a random permutation, the one accelerate's seedable
    sampler draws (generator seeded with seed + epoch), so a single-process run keeps its order.

    A last, partial global batch is filled up with samples of the epoch's first one, as accelerate pads the last
    batches of a multi-process run: without it a single process would take a smaller last step than two, and the
    two would differ in which samples they repeat.
    """

    def __init__(self, n: int, global_batch: int, per_device: int, seed: int = 0, lengths: list[int] | None = None):
        if n < 1 or per_device < 1 or global_batch % per_device:
            raise ValueError(f"need n >= 1 and a global batch that is a multiple of the per-device batch, got n={n}, "
                             f"global batch {global_batch}, per-device {per_device}")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} samples")
        self.n, self.global_batch, self.per_device, self.seed = n, global_batch, per_device, seed
        self.lengths = list(lengths) if lengths is not None else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return -(-self.n // self.global_batch) * self.global_batch

    def order(self) -> list[int]:
        if self.lengths is not None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            out = modality_grouped(self.lengths, self.per_device, self.global_batch // self.per_device, gen)
        else:
            out = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        # the fill: samples of the first global batch, in index order (their order inside it depends on the split)
        fill = sorted(out[:self.global_batch])
        while len(out) < len(self):
            out += fill[:len(self) - len(out)]
        return out

    def __iter__(self):
        return iter(self.order())
