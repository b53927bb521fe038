"""Benchmarks and profiling for dmd_fast (op level and model level).

- :mod:`~dmd_fast.bench.timing`: CUDA-event and CUDA-graph timing, CPU perf_counter fallback.
- :mod:`~dmd_fast.bench.memory`: peak extra device memory and an NVML snapshot.
- :mod:`~dmd_fast.bench.floors`: measured copy bandwidth and the per-score exp/ALU floor.
- :mod:`~dmd_fast.bench.baselines`: the attention and graph-distillation providers we compare.
- :mod:`~dmd_fast.bench.suites`: the attention, graph_distill and model suites, one module each (what
  ``dmd-fast bench`` runs).
- :mod:`~dmd_fast.bench.report`: JSON, markdown and PNG output.
- :mod:`~dmd_fast.bench.cli`: the ``bench`` subcommand.

Nothing here imports the Triton kernels at module import time.
"""
