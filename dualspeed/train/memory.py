"""Peak memory per training mode: CUDA's peak allocated bytes, or on a CPU the process's peak RSS.

The peak is reset before every step (CUDA's peak statistics; on Linux, writing 5 to /proc/self/clear_refs
resets VmHWM), so each mode's figure is the largest step of that mode, not the run's high-water mark."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import TrainerCallback

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _rss_peak() -> int | None:
    try:
        return 1024 * int(re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text()).group(1))
    except (OSError, AttributeError):
        return None


def _rss_reset() -> bool:
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:  # not Linux, or not allowed: the peak becomes the run's high-water mark so far
        return False


class PeakMemory(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.cuda = torch.cuda.is_available()
        self.per_step = True
        self.peak: dict[str, int] = {}

    @property
    def kind(self) -> str:
        if self.cuda:
            return "cuda_max_allocated"
        return "cpu_peak_rss" if self.per_step else "cpu_peak_rss_cumulative"

    def on_step_begin(self, args, state, control, **kw):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.per_step = _rss_reset() and self.per_step

    def on_step_end(self, args, state, control, **kw):
        # global_step has already moved past the step that just ran
        mode = self.trainer.mode_at(state.global_step - 1)
        now = torch.cuda.max_memory_allocated() if self.cuda else _rss_peak()
        if now is not None:
            self.peak[mode] = max(self.peak.get(mode, 0), now)

    def summary(self) -> dict:
        return {"peak_memory_bytes": dict(self.peak), "peak_memory_kind": self.kind}
