"""The package's layers import downwards only: a module may import its own layer and the layers below it,
never one above. Read from the source (ast), so it holds for code the other tests never run."""

import ast
from pathlib import Path

import lpperf

PACKAGE = Path(lpperf.__file__).parent
# Lowest first. A folder is a layer; the top-level modules are the entry points above everything.
LAYERS = ("util", "models", "animation", "optimize", "measure", "reports", "gate", "suite")
ENTRY_POINTS = ("cli", "__main__", "__init__")


def _layer(module: str) -> int:
    """The rank of a module given as its dotted name below lpperf ('measure.timing', 'cli')."""
    head = module.split(".")[0]
    if head in LAYERS:
        return LAYERS.index(head)
    if head in ENTRY_POINTS:
        return len(LAYERS)
    raise AssertionError(f"lpperf.{module} is in no layer: put it in one of {LAYERS} or list it as an entry point")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module below lpperf, line) for every import of lpperf in the file, inside functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "lpperf":
                found += [(alias.name, node.lineno) for alias in node.names]
            elif node.module.startswith("lpperf."):
                found.append((node.module[len("lpperf."):], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name[len("lpperf."):], node.lineno) for alias in node.names
                      if alias.name.startswith("lpperf.")]
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path


def test_every_module_is_in_a_layer():
    for module, _ in _modules():
        _layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        for imported, line in _imports(path):
            if _layer(imported) > own:
                upward.append(f"lpperf/{path.relative_to(PACKAGE)}:{line} imports lpperf.{imported}")
    assert not upward, "imports that run up the layers (" + " < ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_the_gate_worker_and_timing_stand_alone():
    """The gate's worker script runs with the measured side's lpperf first on sys.path: at module level it
    may import nothing of lpperf (everything it measures comes from the side)."""
    worker = PACKAGE / "gate" / "worker.py"
    top_level = [node for node in ast.parse(worker.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not [node.lineno for node in top_level
                if any(name.startswith("lpperf") for name in _names(node))]


def _names(node) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]
