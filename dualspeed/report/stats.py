"""Means over seeds with 95% t-intervals, and the interval of a difference between two rows.

A row trained with n >= 2 seeds gets mean ± t(0.975, n-1)·s/√n. The difference of two rows gets
Welch's interval when both have two or more seeds; where one has a single seed, the within-row
standard deviation pooled over the grid's seeded evaluations of the same kind (evaluated as the row
trained, or not) stands in for the missing spread (`Pooled`), and the interval says so (`how`). A
difference is marked only when its interval excludes 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from scipy import stats as _st

LEVEL = 0.95


@dataclass(frozen=True)
class Stat:
    mean: float
    half: float | None  # half-width of the 95% interval; None with one seed
    n: int
    values: tuple = field(default=(), compare=False)

    def fmt(self, digits: int = 2) -> str:
        if self.half is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"

    @property
    def lo(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def hi(self) -> float | None:
        return None if self.half is None else self.mean + self.half


def _tq(dof: float) -> float:
    return float(_st.t.ppf(0.5 + LEVEL / 2, dof))


def _var(v) -> float:
    m = sum(v) / len(v)
    return sum((x - m) ** 2 for x in v) / (len(v) - 1)


def stat(values) -> Stat:
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no values to average: the row has no seeds")
    m = sum(v) / len(v)
    if len(v) < 2:
        return Stat(m, None, 1, tuple(v))
    return Stat(m, _tq(len(v) - 1) * math.sqrt(_var(v) / len(v)), len(v), tuple(v))


@dataclass(frozen=True)
class Pooled:
    """The within-row spread pooled over rows with >= 2 seeds: sd and its degrees of freedom."""
    sd: float | None
    dof: int
    over: str = ""  # which evaluations, where not every seeded row's normal inference

    @classmethod
    def of(cls, groups, over: str = "") -> "Pooled":
        groups = [list(g) for g in groups if len(g) >= 2]
        dof = sum(len(g) - 1 for g in groups)
        if not dof:
            return cls(None, 0, over)
        return cls(math.sqrt(sum(_var(g) * (len(g) - 1) for g in groups) / dof), dof, over)

    def fmt(self) -> str:
        if self.sd is None:
            return "none"
        return f"sd {self.sd:.2f}, {self.dof} dof{', ' + self.over if self.over else ''}"


@dataclass(frozen=True)
class Diff:
    mean: float
    lo: float | None
    hi: float | None
    how: str  # "welch", "paired", "pooled (<which spread>)" or "none" (no spread known)

    @property
    def outside(self) -> bool:
        """The interval excludes 0: the difference lies outside the run-to-run noise."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def fmt(self) -> str:
        if self.lo is None:
            return f"{self.mean:+.2f} (no interval)"
        return f"{self.mean:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}]{' *' if self.outside else ''}"


def diff(a: Stat, b: Stat, pooled: Pooled | None = None) -> Diff:
    """Interval of a.mean - b.mean (independent rows)."""
    d = a.mean - b.mean
    if a.n >= 2 and b.n >= 2:
        va, vb = _var(a.values) / a.n, _var(b.values) / b.n
        se = math.sqrt(va + vb)
        if se == 0:
            return Diff(d, d, d, "welch")
        dof = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
        h = _tq(dof) * se
        return Diff(d, d - h, d + h, "welch")
    if pooled is not None and pooled.sd is not None:
        h = _tq(pooled.dof) * pooled.sd * math.sqrt(1 / a.n + 1 / b.n)
        return Diff(d, d - h, d + h, f"pooled ({pooled.fmt()})")
    return Diff(d, None, None, "none")
