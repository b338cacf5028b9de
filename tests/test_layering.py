"""The layers of the design brief, as a test (dulwich's test_source idea).

Imports point down; only the CLI prints, reads the environment or knows
typer and tqdm. A new module must be given a layer here.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pkvc"

LAYERS = {
    "pkvc": 0, "pkvc.errors": 0, "pkvc.blobref": 0, "pkvc.progress": 0,
    "pkvc.schema": 1, "pkvc.openpgp": 1, "pkvc.crypto": 1, "pkvc.chunker": 1,
    "pkvc.retention": 1, "pkvc.chunkfeed": 1,
    "pkvc.backends": 2, "pkvc.gpg": 2,
    "pkvc.pack": 3, "pkvc.packer": 3,
    "pkvc.index": 4, "pkvc.keyslots": 4, "pkvc.packscan": 4,
    "pkvc.repo": 5, "pkvc.sessions": 5,
    "pkvc.tree": 6, "pkvc.restore": 6, "pkvc.excludes": 6, "pkvc.filecache": 6,
    "pkvc.identity": 7, "pkvc.claims": 7, "pkvc.series": 7, "pkvc.snapshot": 7,
    "pkvc.check": 7, "pkvc.forget": 7, "pkvc.gc": 7,
    "pkvc.staging": 6,
    "pkvc.share": 7, "pkvc.access": 7, "pkvc.sharekey": 7, "pkvc.pull": 7, "pkvc.bundle": 7,
    "pkvc.server": 8,
    "pkvc.api": 8,
    "pkvc.cli": 9, "pkvc.__main__": 10,
}
UI_ONLY = {"typer", "tqdm", "click"}
UI_MODULES = {"pkvc.cli", "pkvc.__main__"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(), str(path))


def _layer(module: str) -> int:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise AssertionError(f"{module} has no layer in tests/test_layering.py")


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            if node.module == "pkvc":
                yield from (f"pkvc.{alias.name}" for alias in node.names)


MODULES = list(_modules())


@pytest.mark.parametrize("name,tree", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(name, tree):
    own = _layer(name)
    for imported in _imports(tree):
        if imported.startswith("pkvc") and not name.startswith(imported + ".") and imported != name:
            if imported.split(".")[:2] == name.split(".")[:2]:
                continue  # inside one package
            assert _layer(imported) <= own, f"{name} (layer {own}) imports {imported} (layer {_layer(imported)})"


@pytest.mark.parametrize("name,tree", MODULES, ids=[m for m, _ in MODULES])
def test_only_the_cli_talks_to_the_user(name, tree):
    if name in UI_MODULES:
        return
    for imported in _imports(tree):
        assert imported.split(".")[0] not in UI_ONLY, f"{name} imports {imported}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "print", f"{name} prints (line {node.lineno})"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (node.value.id == "os" and node.attr in ("environ", "getenv")), \
                f"{name} reads the environment (line {node.lineno})"
