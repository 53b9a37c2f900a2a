"""Timing on any device: the device synchronised around what is timed, a warm-up call first."""
from __future__ import annotations

import time

import torch


def sync(device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mean_ms(fn, reps: int, device) -> float:
    """fn's mean time per call in milliseconds over `reps` calls, after one untimed warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - t0) / reps
