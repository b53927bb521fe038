"""The structure rules of the layout: one-way imports, the oracle kept apart, short modules, no outside docs."""

import ast
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ["kernels", "ops", "nn", "model", "train", "inference", "cli"]  # each may import only layers to its left
# modules that may import the oracle: the ops' backend="reference" path and the benchmarks' provider
ORACLE_IMPORTERS = {
    "dmd_fast/ops/attention.py",
    "dmd_fast/ops/encoder_embed.py",
    "dmd_fast/ops/encoder_ffn.py",
    "dmd_fast/ops/encoder_in_proj.py",
    "dmd_fast/ops/graph_distill.py",
    "dmd_fast/ops/loss_terms.py",
    "dmd_fast/ops/margin_loss.py",
    "dmd_fast/bench/baselines.py",
}
MAX_LINES = 600


def _source_files():
    return sorted([*(ROOT / "dmd_fast").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])


def _rel(p: pathlib.Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _imports(p: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(module_or_path: str) -> str | None:
    parts = module_or_path.replace("/", ".").removesuffix(".py").split(".")
    if parts[0] == "kernels":
        return "kernels"
    if parts[0] == "dmd_fast" and len(parts) > 1:
        return parts[1] if parts[1] in LAYERS else None
    return None


def test_imports_flow_one_way():
    bad = []
    for p in _source_files():
        mine = _layer(_rel(p))
        if mine is None:
            continue
        for mod in _imports(p):
            theirs = _layer(mod)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{_rel(p)} imports {mod}")
    assert not bad


def test_only_the_backend_dispatch_and_the_benchmarks_import_the_oracle():
    importers = {_rel(p) for p in _source_files() if any(m.startswith("dmd_fast.reference") for m in _imports(p))}
    importers = {f for f in importers if not f.startswith("dmd_fast/reference/")}
    assert importers <= ORACLE_IMPORTERS, sorted(importers - ORACLE_IMPORTERS)


def test_no_source_file_over_600_lines():
    files = [*_source_files(), *(ROOT / "benchmarks").glob("*.py")]
    long = {_rel(p): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_no_citation_of_documents_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = ("shared/docs", "dmd-spec.md", "kernel-anchors.md", "DESIGN.md", "fixtures/README.md")
    bad = []
    for name in tracked:
        if name == "tests/test_layout.py":
            continue
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".sh", ".toml", ".txt") or not path.exists():
            continue
        text = path.read_text(errors="replace")
        bad += [f"{name}: {o}" for o in outside if o in text]
    assert not bad
