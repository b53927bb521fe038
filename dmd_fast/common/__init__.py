"""Definitions shared by the reference oracle, the ops, the layers, the model and the trainer.

No Triton and no oracle logic here: modules outside ``dmd_fast.ops`` (whose ``backend="reference"``
runs the oracle) and the benchmarks import these, never ``dmd_fast.reference``.
"""
