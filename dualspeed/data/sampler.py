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


class ModalityLengthSampler(Sampler):
    """One epoch of modality_grouped indices; a pure function of (seed, epoch), so a resumed run and every
    rank see the same order (the reference drew from the global torch RNG)."""

    def __init__(self, lengths: list[int], batch_size: int, n_chunks: int, seed: int = 0):
        if batch_size < 1 or n_chunks < 1:
            raise ValueError(f"batch_size and n_chunks must be >= 1, got {batch_size} and {n_chunks}")
        self.lengths, self.batch_size, self.n_chunks, self.seed = list(lengths), batch_size, n_chunks, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(modality_grouped(self.lengths, self.batch_size, self.n_chunks, gen))


def grouped_sampler(train_cfg, args, dataset) -> ModalityLengthSampler | None:
    """The trainer's sampler when `train.group_by_modality_length` is set, else None (the Trainer's own).
    One megabatch is one optimizer step over all ranks (world size x accumulation), as in the reference."""
    if not train_cfg.group_by_modality_length:
        return None
    return ModalityLengthSampler(dataset.modality_lengths(), args.per_device_train_batch_size,
                                 args.world_size * args.gradient_accumulation_steps, args.seed)
