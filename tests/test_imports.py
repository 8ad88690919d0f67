"""What a module imports when it is imported must be declared: the standard library, mugv itself, a
dependency, or (for a module that only that feature imports, such as the annotation server) an
optional extra's package."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import mugv

ROOT = Path(mugv.__file__).parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", req).group()) for req in requirements}


def _module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported by the module's own body (not inside functions, guards or TYPE_CHECKING)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mugv", "__future__"}


def test_module_level_imports_are_declared_dependencies():
    declared = _declared_distributions()
    providers = importlib.metadata.packages_distributions()
    undeclared = sorted(
        f"{path.relative_to(ROOT.parent)}: {name}"
        for path in ROOT.rglob("*.py")
        for name in _module_level_imports(path)
        if not declared & {_canonical(dist) for dist in providers.get(name, [])}
    )
    assert not undeclared, "imported at module level but not declared in pyproject.toml:\n" + "\n".join(undeclared)
