"""A built wheel holds every package: each folder of dmd_fast/ and kernels/ (as dmd_fast.kernels)."""

import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _package_dirs() -> set[str]:
    """Wheel paths of every source package: dmd_fast/**, and kernels/** installed under dmd_fast/kernels."""
    dirs = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "dmd_fast").rglob("__init__.py")}
    dirs |= {"dmd_fast/" + p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "kernels").rglob("__init__.py")}
    return {d for d in dirs if "__pycache__" not in d}


def test_wheel_contains_every_package(tmp_path):
    # build from a clean copy: setuptools reuses a build/ folder left in the checkout
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("dmd_fast", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
        str(src),
    ]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, text=True)
    (wheel,) = tmp_path.glob("dmd_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    expected = _package_dirs()
    assert "dmd_fast/kernels" in expected and len(expected) >= 9
    assert expected <= in_wheel, f"missing from the wheel: {sorted(expected - in_wheel)}"
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must install as dmd_fast.kernels only"
    assert any(n.endswith("entry_points.txt") for n in names)
    py_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dmd_fast").rglob("*.py")}
    assert py_files <= set(names)
