"""The benchmark suites behind ``dmd-fast bench``, one module each.

- :mod:`~dmd_fast.bench.suites.attention`: the attention core at DMD's shapes, the recompile check.
- :mod:`~dmd_fast.bench.suites.graph_distill`: DMD's homo and hetero GD units.
- :mod:`~dmd_fast.bench.suites.model`: one DMD training step and one hetero-branch step.
- :mod:`~dmd_fast.bench.suites.latency`: inference latency per batch size (``--suite latency``, its own driver).
- :mod:`~dmd_fast.bench.suites.runner`: options, budget table, recorder and the one item runner.
- :mod:`~dmd_fast.bench.suites.driver`: suite and provider selection, order, :func:`run_suites`.
"""

from dmd_fast.bench.suites.driver import (
    ALL_PROVIDERS,
    KNOWN_PROVIDERS,
    PROVIDER_HELP,
    SUITE_ALIASES,
    SUITES,
    canonical_suite,
    default_providers,
    run_suites,
)
from dmd_fast.bench.suites.runner import BUDGET_S, Budget, SuiteOptions

__all__ = [
    "ALL_PROVIDERS",
    "BUDGET_S",
    "Budget",
    "KNOWN_PROVIDERS",
    "PROVIDER_HELP",
    "SUITES",
    "SUITE_ALIASES",
    "SuiteOptions",
    "canonical_suite",
    "default_providers",
    "run_suites",
]
