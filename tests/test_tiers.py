"""The GPU tier is selected by the ``gpu`` marker, and no CUDA-only test can escape it."""

import pathlib
import re

from tiers import gpu_test_files, unmarked_cuda_tests

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_FILES = sorted([*(ROOT / "tests").glob("test_*.py"), *(ROOT / "benchmarks").glob("test_*.py")])


def test_every_cuda_only_test_is_marked_gpu():
    bad = {p.name: unmarked_cuda_tests(p.read_text()) for p in TEST_FILES}
    assert not {k: v for k, v in bad.items() if v}


def test_checker_finds_an_unmarked_cuda_test():
    src = """
import pytest

def test_gpu_thing():
    pass

@pytest.mark.skipif(not HAS_CUDA, reason="x")
@pytest.mark.gpu
def test_skipped_by_hand():
    pass

def test_body_skip(backend):
    if backend == "triton" and not CUDA:
        pytest.skip("GPU only")

def test_cuda_tensors():
    x = torch.ones(2, device="cuda")

def test_moves():
    x = t.cuda()

@pytest.mark.gpu
@pytest.mark.parametrize("a", [1])
def test_marked(a):
    x = torch.ones(2, device="cuda")

def test_cpu():
    x = torch.ones(2, device="cpu")
"""
    bad = [b.split(":")[0] for b in unmarked_cuda_tests(src)]
    assert bad == ["test_gpu_thing", "test_skipped_by_hand", "test_body_skip", "test_cuda_tensors", "test_moves"]
    assert unmarked_cuda_tests("import pytest\npytestmark = pytest.mark.gpu\ndef test_gpu_a():\n    pass\n") == []


def test_check_script_selects_the_gpu_marker_and_lists_every_gpu_test_file():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert re.search(r"pytest[^\n]*-m gpu", script) and not re.search(r"pytest[^\n]* -k ", script)
    listed = re.search(r'GPU_TEST_FILES="([^"]+)"', script).group(1).split()
    with_gpu = gpu_test_files(ROOT)
    assert with_gpu and sorted(listed) == with_gpu
