"""Shared test-tier facts: is CUDA here, where is the upstream parity fixture, which tests are GPU-only.

The GPU tier is the registered ``gpu`` marker (pyproject.toml): tests/conftest.py skips marked tests
without CUDA and ``benchmarks/gpu_check.sh`` selects them with ``-m gpu``. :func:`unmarked_cuda_tests`
finds CUDA-only tests that lack the marker (they would never run on a GPU).
"""

import ast
import os
import pathlib

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    HAS_CUDA = False

FIXTURE_ENV = "DMD_FAST_FIXTURE"
FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "upstream_dmd_mosei_aligned.pt"


def fixture_path() -> pathlib.Path:
    """The upstream parity fixture (env DMD_FAST_FIXTURE overrides the default location beside the clone)."""
    p = os.environ.get(FIXTURE_ENV)
    return pathlib.Path(p) if p else FIXTURE


def _is_gpu_mark(node: ast.expr) -> bool:
    """``pytest.mark.gpu`` (bare or called)."""
    node = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(node) == "pytest.mark.gpu"


def _cuda_reasons(fn: ast.FunctionDef) -> list[str]:
    """Why a test function is CUDA-only: its name, a skip-unless-CUDA decorator, or CUDA tensors in its body."""
    why = []
    if fn.name.startswith("test_gpu"):
        why.append("named test_gpu*")
    for dec in fn.decorator_list:
        src = ast.unparse(dec)
        if "skipif" in src and "cuda" in src.lower() and "not " in src:
            why.append(f"skip-unless-CUDA decorator {src!r} (use @pytest.mark.gpu)")
    for node in ast.walk(fn):
        if isinstance(node, ast.If) and "cuda" in ast.unparse(node.test).lower():
            if any("pytest.skip" in ast.unparse(b) for b in node.body):
                why.append(f"skip-unless-CUDA in the body under {ast.unparse(node.test)!r} (use the gpu marker)")
        if isinstance(node, ast.keyword) and node.arg == "device" and isinstance(node.value, ast.Constant):
            if node.value.value == "cuda":
                why.append('device="cuda"')
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda":
            if not node.args and not node.keywords:
                why.append(".cuda()")
    return why


def unmarked_cuda_tests(source: str) -> list[str]:
    """Test functions of ``source`` that are CUDA-only but not marked ``gpu`` (module ``pytestmark`` counts)."""
    tree = ast.parse(source)
    module_marked = any(
        isinstance(n, ast.Assign)
        and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
        and "pytest.mark.gpu" in ast.unparse(n.value)
        for n in tree.body
    )
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test"):
            continue
        why = _cuda_reasons(fn)
        marked = module_marked or any(_is_gpu_mark(d) for d in fn.decorator_list)
        skip_decorators = [w for w in why if w.startswith("skip-unless-CUDA")]
        if (why and not marked) or skip_decorators:
            bad.append(f"{fn.name}: {', '.join(why)}")
    return bad


def gpu_test_files(root: pathlib.Path) -> list[str]:
    """tests/ files with at least one ``gpu``-marked test, as 'tests/NAME.py'."""

    def marked(path: pathlib.Path) -> bool:
        tree = ast.parse(path.read_text())
        return any(
            isinstance(fn, ast.FunctionDef) and any(_is_gpu_mark(d) for d in fn.decorator_list) for fn in ast.walk(tree)
        )

    return sorted(f"tests/{p.name}" for p in (root / "tests").glob("test_*.py") if marked(p))
