"""Fast-slow training losses: the mode schedule, the self-distillation loss, and the loss of one step in a
given training mode (shared by the trainer and the benchmark)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modes import FAST, FULL, SLOW



@dataclass(frozen=True)
class ModeSchedule:
    """Slow mode with probability r, as a pure function of (seed, step).

    The published code drew the mode with an unsynchronised random.random() per process, so DDP
    ranks could disagree and deadlock or mix modes. Hashing (seed, step) gives every rank, and a
    resumed run, the same sequence without any shared state.
    """

    slow_prob: float
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.slow_prob <= 1.0:
            raise ValueError(f"slow-mode probability r must be in [0, 1], got {self.slow_prob}")

    def uniform(self, step: int) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{step}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    def mode(self, step: int) -> str:
        return SLOW if self.uniform(step) < self.slow_prob else FAST


def align_answers(student: torch.Tensor, s_counts: torch.Tensor, teacher: torch.Tensor, t_counts: torch.Tensor):
    """Keep each sample's first min(n_student, n_teacher) answer positions in both ([M, V] rows grouped by
    sample, counts [B]). Cutting the spliced sequence to max_length can leave the full-sequence student
    fewer answer tokens than its pruned teacher; the reference compares the common prefix, as here."""
    if torch.equal(s_counts, t_counts):
        return student, teacher
    keep = torch.minimum(s_counts, t_counts)

    def take(x, counts):
        starts = torch.cumsum(counts, 0) - counts
        rows = [torch.arange(int(a), int(a) + int(k), device=x.device) for a, k in zip(starts, keep)]
        return x[torch.cat(rows)] if rows else x[:0]

    return take(student, s_counts), take(teacher, t_counts)


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, tau_squared: bool = True) -> torch.Tensor:
    """KL(softmax(teacher/tau) || softmax(student/tau)), mean over answer positions, times tau^2 when
    tau_squared (the reference, as Hinton et al.: the softened gradients shrink as 1/tau^2). [M, V] each."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher and student disagree on the answer positions: {tuple(teacher.shape)} vs {tuple(student.shape)}"
        )
    if student.numel() == 0:
        return student.sum() * 0.0
    log_p_s = F.log_softmax(student.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return kl * tau ** 2 if tau_squared else kl


@dataclass
class StepLoss:
    loss: torch.Tensor
    visual_tokens: int  # fed to the LLM in this step, the teacher's forward included
    teacher_ce: torch.Tensor | None = None  # fast-mode CE (the fast step itself, or the slow step's teacher)
    student_ce: torch.Tensor | None = None  # full-sequence CE
    kl: torch.Tensor | None = None
    out: object = None  # the forward whose graph `loss` hangs on


def mode_loss(model, inputs: dict, mode: str, prune, isolator: bool, distill: bool = True, tau: float = 1.0,
              lam: float = 1.0, teacher_model=None, tau_squared: bool = True) -> StepLoss:
    """L_fast = CE on pruned (+ isolator) tokens; L_slow = CE on the full sequence + lam * (tau^2) KL to the
    fast-mode teacher; FULL = plain CE. `teacher_model` is the same network without wrappers (DDP,
    DeepSpeed), so the no-grad teacher forward does not touch their gradient hooks."""
    if mode == FULL:
        out = model(**inputs)
        return StepLoss(out.ce, out.visual_tokens, student_ce=out.ce.detach(), out=out)
    if mode == FAST:
        out = model(**inputs, prune=prune, isolator=isolator)
        return StepLoss(out.ce, out.visual_tokens, teacher_ce=out.ce.detach(), out=out)
    if mode != SLOW:
        raise ValueError(f"unknown training mode {mode!r}; expected {FAST}, {SLOW} or {FULL}")
    teacher = None
    if distill:
        # the teacher is this same model in fast mode; no gradient flows through it
        with torch.no_grad():
            teacher = (teacher_model or model)(**inputs, prune=prune, isolator=isolator)
    out = model(**inputs)
    student_ce = out.ce
    if teacher is None:
        return StepLoss(student_ce, out.visual_tokens, student_ce=student_ce.detach(), out=out)
    student_z, teacher_z = align_answers(out.answer_logits, out.answer_counts, teacher.answer_logits,
                                         teacher.answer_counts)
    kl = distill_kl(student_z, teacher_z, tau, tau_squared)
    return StepLoss(student_ce + lam * kl, out.visual_tokens + teacher.visual_tokens, teacher_ce=teacher.ce.detach(),
                    student_ce=student_ce.detach(), kl=kl.detach(), out=out)
