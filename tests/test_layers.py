"""The package's layers import downwards only: a module may import its own layer and the layers below it,
never one above. Read from the source (ast), so it holds for code the other tests never run."""

import ast
from pathlib import Path

import lpperf

PACKAGE = Path(lpperf.__file__).parent
# Lowest first. A folder is a layer; the top-level modules are the entry points above everything.
LAYERS = ("util", "models", "animation", "optimize", "measure", "reports", "gate", "suite")
ENTRY_POINTS = ("cli", "__main__", "__init__")


def _layer(module: str) -> int | None:
    """The rank of a module given as its dotted name below lpperf ('measure.timing', 'cli'); None if it
    is in no layer."""
    head = module.split(".")[0]
    if head in LAYERS:
        return LAYERS.index(head)
    if head in ENTRY_POINTS:
        return len(LAYERS)
    return None


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
    homeless = [module for module, _ in _modules() if _layer(module) is None]
    assert not homeless, f"put these in one of {LAYERS} or list them as entry points: {homeless}"


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue  # test_every_module_is_in_a_layer names it
        for imported, line in _imports(path):
            rank = _layer(imported)
            if rank is None or rank > own:
                upward.append(f"lpperf/{path.relative_to(PACKAGE)}:{line} imports lpperf.{imported}")
    assert not upward, "imports that run up the layers (" + " < ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_the_gate_worker_imports_nothing_of_lpperf_at_module_level():
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
