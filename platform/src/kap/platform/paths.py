"""Where the repository is, for the files kap ships beside its packages (launcher, migrations)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path


@cache
def repo_root() -> Path | None:
    """The uv workspace root that holds this source tree, or None for a plain wheel install."""
    for parent in Path(__file__).resolve().parents:
        pyproject = parent / "pyproject.toml"
        if not pyproject.is_file():
            continue
        data = tomllib.loads(pyproject.read_text())
        if "workspace" in data.get("tool", {}).get("uv", {}):
            return parent
    return None
