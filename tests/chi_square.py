"""The distribution tests' statistic, shared by test_speculative.py and test_jacobi.py."""

from __future__ import annotations


def chi_square(counts: dict, joint: dict) -> tuple[float, float]:
    """(statistic, critical value at p = 0.001). Sequences expected fewer than 5 times are pooled
    into one bin (the statistic is not chi-square distributed for such cells: one unlucky
    draw of a 0.01-expected sequence alone adds 100)."""
    n = sum(counts.values())
    if not set(counts) <= set(joint):
        return float("inf"), 0.0  # a sequence plain sampling can never produce
    rare = [k for k, q in joint.items() if n * q < 5]
    bins = [(counts.get(k, 0), n * q) for k, q in joint.items() if n * q >= 5]
    if rare:
        bins.append((sum(counts.get(k, 0) for k in rare), n * sum(joint[k] for k in rare)))
    dof = len(bins) - 1
    # Wilson-Hilferty: the chi-square quantile from the normal one (z = 3.09 at p = 0.001),
    # within 0.3% of the tabled values from 5 degrees of freedom up.
    critical = dof * (1 - 2 / (9 * dof) + 3.09 * (2 / (9 * dof)) ** 0.5) ** 3
    return sum((c - e) ** 2 / e for c, e in bins), critical
