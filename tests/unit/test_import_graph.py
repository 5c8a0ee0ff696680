"""The library never imports the CLI: every import in src/vqaserve outside cli/ (and the
`python -m vqaserve` entry point), at any depth of a module (imports inside functions included),
read from the source with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "vqaserve"
# The CLI's side of the line: the CLI itself, and `python -m vqaserve`, which only calls it.
CLI_SIDE = ({"cli"}, {"__main__.py"})


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, package_dir: Path) -> set[str]:
    """Every module `path` imports (relative imports resolved), wherever the import statement is."""
    here = module_name(path, package_dir)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def library_imports_of_the_cli(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package).parts
        if where[0] in CLI_SIDE[0] or where in {(name,) for name in CLI_SIDE[1]}:
            continue
        cli = {m for m in imported(path, package) if m == "vqaserve.cli" or m.startswith("vqaserve.cli.")}
        if cli:
            found[module_name(path, package)] = cli
    return found


def test_the_library_never_imports_the_cli() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 50  # the walk reads the real package
    assert library_imports_of_the_cli(PACKAGE) == {}


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The check itself: a lazy import of the CLI deep in a function, or a relative one, is found."""
    package = tmp_path / "vqaserve"
    (package / "server").mkdir(parents=True)
    (package / "cli").mkdir()
    (package / "server" / "app.py").write_text("def f():\n    if True:\n        from vqaserve.cli.serve import x\n")
    (package / "server" / "other.py").write_text("from ..cli import main\n")
    (package / "cli" / "serve.py").write_text("from vqaserve.server import app\n")  # the CLI may import the library
    assert library_imports_of_the_cli(package) == {
        "vqaserve.server.app": {"vqaserve.cli.serve", "vqaserve.cli.serve.x"},
        "vqaserve.server.other": {"vqaserve.cli", "vqaserve.cli.main"}}
