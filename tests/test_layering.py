"""Layers point one way (README "Layout"): a walk over every module's imports, lazy ones included.

core (errors, io, config) <- text <- data, toy <- models <- pipeline <- probes, train <- studies <- commands;
the report layer imports only core. Probes and the trainer never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sdxl_probe"
CORE_MODULES = {"__init__", "errors", "io", "config", "options", "outputs"}
TOP_MODULES = {"cli", "demo", "reports", "__main__"}  # the composition level, with commands/

BELOW: dict[str, set[str]] = {
    "core": set(),
    "report": {"core"},
    "text": {"core"},
    "data": {"core", "text"},
    "toy": {"core", "text"},
    "models": {"core", "text", "toy"},
    "pipeline": {"core", "text", "data", "toy", "models"},
    "probes": {"core", "text", "data", "toy", "models", "pipeline", "report"},
    "train": {"core", "text", "data", "toy", "models", "pipeline", "report"},
    "studies": {"core", "text", "data", "toy", "models", "pipeline", "report", "probes", "train"},
}


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside ``sdxl_probe``."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in CORE_MODULES:
        return "core"
    if head in TOP_MODULES or head == "commands":
        return "commands"
    return head


def imported_modules(source: str, module: str) -> set[str]:
    """Every ``sdxl_probe`` module that ``source`` imports, at any depth (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sdxl_probe"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("sdxl_probe"):
                found.add(name)
    return found


def violations(module: str, source: str) -> list[str]:
    """Arrows from ``module`` that point up (or sideways between probes and train)."""
    mine = layer_of(module)
    if mine == "commands":
        return []
    allowed = BELOW[mine] | {mine}
    return [f"{module} -> {dep} ({mine} may not import {layer_of(dep)})"
            for dep in sorted(imported_modules(source, module)) if layer_of(dep) not in allowed]


def package_modules() -> dict[str, str]:
    """dotted name -> source of every module in the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def test_every_module_has_a_known_layer():
    unknown = {m for m in package_modules() if layer_of(m) not in BELOW and layer_of(m) != "commands"}
    assert not unknown, f"modules outside every layer (add them to BELOW): {sorted(unknown)}"


def test_no_import_points_up():
    bad = [v for name, source in package_modules().items() for v in violations(name, source)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_checker_catches_an_upward_import():
    # A hand-written module of each kind of wrong arrow: the checker must name every one.
    src = "def f():\n    from sdxl_probe.probes.audit import core\n    import sdxl_probe.train.state\n"
    assert len(violations("sdxl_probe.pipeline.sampling", src)) == 2
    assert violations("sdxl_probe.report.render", "from sdxl_probe.models import load\n")
    assert violations("sdxl_probe.probes.embed.core", "from sdxl_probe.train import state\n")
    assert violations("sdxl_probe.train.state", "from ..probes.tokens import core\n")
    assert not violations("sdxl_probe.commands.train", "from sdxl_probe.train import state\n")
