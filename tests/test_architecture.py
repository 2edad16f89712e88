"""The package's layering, checked from the source: dependencies point one way, with no cycles.

Every module of ``hubert_ecg`` is given a layer, in the order data flows (files -> preprocessing ->
store -> batches -> network -> checkpoints -> training -> evaluation/inference -> command line). An
import, at module level or inside a function, may only reach the same or a lower layer. A new module
must be placed here first, so its position is a decision, not an accident (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hubert_ecg"

# Lower numbers are closer to the files on disk. Subpackages are matched by prefix ("io" covers io.*).
LAYERS: dict[str, int] = {
    # 0: leaves with no project imports: file safety, readers, synthetic records
    "hubert_ecg": 0,
    "_version": 0,
    "atomic": 0,
    "safe_pickle": 0,
    "io": 0,
    "synthetic": 0,
    "progress": 0,
    "shards": 0,  # the resumable block loop of prepare, features and label (no project imports)
    # 1-3: signals -> preprocessed windows -> the prepared store -> batches
    "preprocess": 1,
    "reading": 1,  # read + preprocess one record in a worker, the pool, the rejects table (under the store)
    "store": 2,
    "label_tables": 2,
    "loader": 3,
    # 4: plain-data helpers shared by training and evaluation (no network)
    "config": 4,
    "metrics": 4,
    "calibration": 4,
    "plots": 4,
    "report": 4,
    "tasks": 4,
    "compare": 4,
    "subgroups": 4,  # paired bootstrap / DeLong and subgroup tables: NumPy on saved scores
    # 5: the network (a leaf above its config) and the save/load base class it inherits, HF
    # PreTrainedModel-style (hub.py works through cls/self.config and never imports model.py)
    "model": 5,
    "hub": 5,
    # 6: weights on disk (the functional API: load_model, save_pretrained, describe)
    "checkpoint": 6,
    # 7: run-time choices and run records
    "runtime": 7,
    "distributed": 7,
    "runs": 7,
    # 8: the one training loop
    "training": 8,
    # 9: its objectives
    "finetune": 9,
    "pretraining": 9,
    "recipes": 9,
    # validation inside fine-tuning scores rows exactly as `evaluate` does, so evaluation sits beside it
    "evaluate": 9,
    # 10: using trained models
    "inference": 10,
    "fast_inference": 10,
    "export": 10,
    "pipeline": 10,
    "sklearn": 10,
    "explain": 10,
    "hf_datasets": 10,
    "deploy": 10,
    # 11: entry points
    "demo": 11,
    "cli": 11,
    "__main__": 11,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (functions included)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for candidate in [name] + [f"{name}.{alias.name}" for alias in node.names]:
                if candidate in known and candidate != module:
                    out.add(candidate)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in known and alias.name != module}
    return out


def _layer(module: str) -> int:
    parts = module.split(".")[1:] or ["hubert_ecg"]
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    raise KeyError(module)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_has_a_declared_layer() -> None:
    undeclared = []
    for module in _graph():
        try:
            _layer(module)
        except KeyError:
            undeclared.append(module)
    assert not undeclared, f"place these modules in LAYERS (tests/test_architecture.py): {undeclared}"


def test_imports_never_run_up_the_layers() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in _graph().items()
        for d in deps
        if not d.startswith(m + ".") and not m.startswith("hubert_ecg.cli") and _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles_even_inside_functions() -> None:
    graph = {
        m: {d for d in deps if not d.startswith(m + ".") and not m.startswith(d + ".")} for m, deps in _graph().items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_the_network_imports_only_its_config() -> None:
    deps = _graph()["hubert_ecg.model"]
    assert deps <= {"hubert_ecg.config", "hubert_ecg.hub"}, deps
    # the save/load base class sees only configs and file safety, never the network
    assert _graph()["hubert_ecg.hub"] <= {"hubert_ecg.config", "hubert_ecg.atomic", "hubert_ecg.safe_pickle"}


@pytest.mark.parametrize("module", ["hubert_ecg.io", "hubert_ecg.preprocess", "hubert_ecg.reading", "hubert_ecg.store"])
def test_data_side_starts_without_torch(module: str) -> None:
    """Readers, preprocessing and the store workers must not pull in PyTorch (fast start, small workers)."""
    import subprocess
    import sys

    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"{module} imports torch"


def test_the_layering_check_can_fail(tmp_path: Path) -> None:
    """A planted upward import is detected (so the check above is not vacuous)."""
    planted = tmp_path / "model.py"
    planted.write_text("from .inference import predict\n\ndef f():\n    from .evaluate import evaluate\n")
    deps = _imports("hubert_ecg.model", planted, {"hubert_ecg.inference", "hubert_ecg.evaluate"})
    assert deps == {"hubert_ecg.inference", "hubert_ecg.evaluate"}
    assert all(_layer(d) > _layer("hubert_ecg.model") for d in deps)
