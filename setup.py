"""Thin shim: metadata, extras and tools live in pyproject.toml; this file only discovers packages.

Every package under dmd_fast/ is found, and the top-level folder kernels/ (subpackages included)
installs as ``dmd_fast.kernels``.
"""

from setuptools import find_packages, setup

KERNELS = "dmd_fast.kernels"
packages = find_packages(include=["dmd_fast", "dmd_fast.*"])
packages += [KERNELS] + [f"{KERNELS}.{p}" for p in find_packages("kernels")]

setup(packages=packages, package_dir={KERNELS: "kernels"})
