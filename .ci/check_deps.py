"""Every third-party package the code imports is declared in pyproject.toml where it is needed.

The product (pipeline/, assets/) may import only [project.dependencies]; the emulator also its
extra `emulator`, the bench `bench`, the tests `dev`. Run by .ci/lint with the project's venv:
    .venv/bin/python .ci/check_deps.py
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"pipeline", "assets", "gradient_emulator", "bench", "tests"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared(project: dict, *extras: str) -> set[str]:
    names = {_name(r) for r in project["dependencies"]}
    optional = project.get("optional-dependencies", {})
    pending = list(extras)
    while pending:
        for requirement in optional.get(pending.pop(), []):
            if requirement.startswith(project["name"] + "["):
                pending.extend(requirement.split("[", 1)[1].rstrip("]").split(","))
            else:
                names.add(_name(requirement))
    return names


def imported_modules(folder: Path) -> dict[str, str]:
    """Top-level module -> first file importing it."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        if "migrations/versions" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def main() -> int:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    distributions = packages_distributions()
    optional_imports = {"sniffio"}  # pipeline/gradient/client.py: deliberately absent
    areas = {
        "pipeline": declared(project),
        "assets": declared(project),
        "gradient_emulator": declared(project, "emulator"),
        "bench": declared(project, "bench"),
        "tests": declared(project, "dev", "mysql"),
    }
    problems = []
    for folder, allowed in areas.items():
        # what a declared package brings along (e.g. dagster's own dependencies) is not enough:
        # every import must be declared itself
        for module, where in imported_modules(REPO / folder).items():
            if module in FIRST_PARTY or module in sys.stdlib_module_names or module in optional_imports:
                continue
            dists = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
            if not dists:
                problems.append(f"{where}: imports {module!r}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(
                    f"{where}: imports {module!r} (distribution {', '.join(sorted(dists))}) not declared "
                    f"for {folder}/ in pyproject.toml; add it, pinned, with a comment saying why"
                )
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
