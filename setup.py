"""Install dmd_fast; the top-level folder kernels/ installs as dmd_fast.kernels (DESIGN.md §1)."""
from setuptools import setup

PACKAGES = [
    "dmd_fast",
    "dmd_fast.reference",
    "dmd_fast.ops",
    "dmd_fast.nn",
    "dmd_fast.model",
    "dmd_fast.data",
    "dmd_fast.train",
    "dmd_fast.bench",
    "dmd_fast.kernels",
]

setup(
    name="dmd-fast",
    version="0.1.0",
    description="Fused Triton kernels and a faithful reference for DMD multimodal emotion recognition",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"dmd_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system=='Linux'",
        "numpy",
        "nvidia-ml-py",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "plots": ["matplotlib"],
        "bert": ["transformers"],
    },
    entry_points={"console_scripts": ["dmd-fast=dmd_fast.cli:main"]},
)
