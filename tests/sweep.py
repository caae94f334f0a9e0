"""Sweeps over solver variants split between the default suite and the slow set.

A test run over every registered solver variant (or every process, grid, ...) checks the same code many times over.
The default suite keeps a few cases, so every solver (or each kind of case) is still checked there, and marks the
others `slow` (scripts/test_slow.sh runs them; the README lists the set). No case is dropped.
"""

import pytest


def slow_unless(cases, fast, unpack=True):
    """`cases` as pytest parameters: the cases with `fast(case)` as they are, the others marked slow.

    `unpack`: a case is the tuple of several argnames (`parametrize("name, opts", ...)`); False for one argname
    whose values are tuples (`parametrize("config", ...)`)."""
    cases = list(cases)
    return [(pytest.param(*case, marks=marks) if unpack else pytest.param(case, marks=marks))
            for case, marks in ((case, () if fast(case) else (pytest.mark.slow,)) for case in cases)]


def one_per_kind(cases, kind=lambda case: case[0], unpack=True):
    """`slow_unless` keeping the last case of each `kind(case)` (by default each solver name): the last, because
    `Solver.variants()` lists a solver's simplest variant first (order 1, no corrector), so the last is its most
    demanding one."""
    cases = list(cases)
    last = {kind(case): i for i, case in enumerate(cases)}
    keep = {id(cases[i]) for i in last.values()}
    return slow_unless(cases, lambda case: id(case) in keep, unpack)
