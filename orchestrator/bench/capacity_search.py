"""The search behind SLA capacity: the highest load whose attainment meets the target.

Attainment is not strictly monotone in the rate: a run at a higher rate draws other
task sizes and (for bursty arrivals) other burst lengths, so ``find_capacity`` does not
trust a plain bisection from a guess. It first evaluates a fixed grid of loads (the
same for every seed, so the attainment curves average over seeds), extends it upward
while its top still meets the target, and takes the bracket from the HIGHEST load that
meets the target and the next probed load above it, which misses. Bisection then keeps
that invariant (low end meets, high end misses), so it ends on a crossing: a rate that
meets the target with a rate at most ``tolerance`` above it that misses. A dip below
the target at a lower load does not cut the search short; a lone pass above a failing
load counts only if the grid or the bisection lands on it (the count of such inversions
among the probes is reported with each result, so noisy cells are visible).

Pure: the attainment function is the caller's (the simulator, or a test's curve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

TARGET = 0.9
TOLERANCE = 0.01  # of C
CEILING = 4.0  # loads above this are not searched ("above" the range)
FLOOR = 0.02  # loads below this are not searched ("below" the range)

Censored = Literal["", "above", "below"]


@dataclass(frozen=True)
class Search:
    """Where a search ended: ``capacity`` in loads (x C), and every probe it made."""

    capacity: float
    probes: tuple[tuple[float, float], ...]  # (load, attainment), in probe order
    censored: Censored = ""
    inversions: int = 0


def find_capacity(
    attainment: Callable[[float], float],
    grid: Sequence[float],
    *,
    target: float = TARGET,
    tolerance: float = TOLERANCE,
    ceiling: float = CEILING,
    floor: float = FLOOR,
) -> Search:
    """The highest load whose ``attainment`` meets ``target``, to ``tolerance``.

    Bracket on the grid (extended up while its top meets, down by halves while nothing
    meets), from the highest meeting load to the next probed load above it; then bisect,
    keeping "low end meets, high end misses". Returns 0 with ``censored="below"`` when
    not even ``floor`` meets, and ``ceiling`` with ``censored="above"`` when it does.
    """
    loads = sorted(set(grid))
    if not loads or loads[0] <= 0 or tolerance <= 0 or not 0 < floor <= loads[0] <= ceiling:
        raise ValueError("need a grid of positive loads within [floor, ceiling] and tolerance > 0")
    seen: dict[float, float] = {}

    def meets(load: float) -> bool:
        if load not in seen:
            seen[load] = attainment(load)
        return seen[load] >= target

    for load in loads:
        meets(load)
    step = loads[-1] - loads[-2] if len(loads) > 1 else loads[-1]
    top = loads[-1]
    while meets(top) and top < ceiling:
        top = min(round(top + step, 10), ceiling)
    censored: Censored = ""
    if meets(top):
        censored = "above"
    low = loads[0]
    while not any(a >= target for a in seen.values()) and low / 2 >= floor:
        low /= 2
        meets(low)
    passing = [x for x, a in seen.items() if a >= target]
    if censored:
        capacity = top
    elif not passing:
        capacity, censored = 0.0, "below"
    else:
        lo = max(passing)
        hi = min(x for x in seen if x > lo)
        while hi - lo > tolerance:
            mid = round((lo + hi) / 2, 10)
            if meets(mid):
                lo = mid
            else:
                hi = mid
        capacity = lo
    ordered = sorted(seen.items())
    inversions = sum(
        1 for i, (_, a) in enumerate(ordered) for _, b in ordered[i + 1 :] if a < target <= b
    )
    return Search(capacity, tuple(seen.items()), censored, inversions)
