"""The package's layers import downwards only, with no cycle, counting imports inside functions,
and importing the package changes no global state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "monai_emma"

#: lowest first; a module may import its own layer (without cycles) and the layers below
LAYERS = [
    (
        "monai_emma",
        "monai_emma.errors",
        "monai_emma.extras",
        "monai_emma.precision",
        "monai_emma.io.atomic",
        "monai_emma.io.remote",
        "monai_emma.threads",
    ),
    ("monai_emma.networks",),
    ("monai_emma.transforms", "monai_emma.losses", "monai_emma.metrics", "monai_emma.baselines"),
    ("monai_emma.data", "monai_emma.weights"),
    (
        "monai_emma.io",
        "monai_emma.fuse2d",
        "monai_emma.inferers",
        "monai_emma.fidelity",
        "monai_emma.viewer",
        "monai_emma.studies",
    ),
    ("monai_emma.engines", "monai_emma.model_source", "monai_emma.registry", "monai_emma.serving"),
    ("monai_emma.fusion", "monai_emma.evaluation"),
    ("monai_emma.bundle", "monai_emma.pipeline", "monai_emma.cli", "monai_emma.__main__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every monai_emma module each module imports, at any depth of its code."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_pkg else name.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for n in names:
                parts = n.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts and ".".join(parts) != name and parts[0] == "monai_emma":
                    targets.add(".".join(parts))
        graph[name] = targets
    return graph


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS"
    return layer


def test_imports_go_downwards_only():
    graph = _imports(_modules())
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in graph.items()
        for t in targets
        if _layer(t) > _layer(m) and t != "monai_emma"
    ]
    assert not upward, "\n".join(sorted(upward))
    networks = {t for m, ts in graph.items() if m.startswith("monai_emma.networks") for t in ts}
    assert all(t.startswith("monai_emma.networks") for t in networks), networks


def test_no_import_cycle():
    graph = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_importing_changes_no_global_state():
    """Logging levels, warning filters and torch's flush-denormal mode are the same before and
    after importing every module (a fresh interpreter)."""
    code = """
import importlib, logging, pkgutil, warnings, torch
# the third-party stack first: its own import-time settings are not ours
for lib in ("numpy", "scipy.special", "PIL.Image", "cv2", "pywt", "nibabel", "pydicom", "tqdm", "ignite.engine",
            "monai.transforms", "monai.engines", "monai.handlers", "monai.bundle", "monai.data", "monai.inferers",
            "monai.networks", "monai.metrics"):
    importlib.import_module(lib)
import monai_emma
def state():
    loggers = {n: l.level for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)}
    return loggers, list(warnings.filters), torch.get_num_threads()
before = state()
for m in pkgutil.walk_packages(monai_emma.__path__, "monai_emma."):
    if not m.name.startswith("monai_emma.pipeline") and not m.name.endswith("__main__"):  # __main__ runs the CLI
        importlib.import_module(m.name)
after = state()
changed = {n: (before[0].get(n), lvl) for n, lvl in after[0].items() if n in before[0] and before[0][n] != lvl}
assert not changed, changed
assert before[1] == after[1][-len(before[1]):] and len(after[1]) == len(before[1]), "warning filters changed"
assert before[2] == after[2]
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
