"""The repository's shape: the card's layout, the namespace package, the dependency direction."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = ("platform", "graphstore", "workers", "training", "kernels", "ui")
# DESIGN.md §2: platform <- graphstore <- workers, platform <- training <- kernels,
# ui -> platform, graphstore. Each member may import only itself and these.
ALLOWED = {
    "platform": set(),
    "graphstore": {"platform"},
    "workers": {"platform", "graphstore"},
    "training": {"platform"},
    "kernels": {"platform", "training"},
    "ui": {"platform", "graphstore"},
}
GPU_ONLY = ("vllm", "faiss-gpu-cu12", "faiss-gpu")


def test_top_level_layout_is_the_cards() -> None:
    for name in (*MEMBERS, "migrations", "tests"):
        assert (ROOT / name).is_dir(), name
    for name in ("docker-compose.yml", "pyproject.toml", "README.md", "Makefile", "uv.lock"):
        assert (ROOT / name).is_file(), name
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.parametrize("member", MEMBERS)
def test_member_is_a_distribution_under_the_kap_namespace(member: str) -> None:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"kap-{member}"
    assert (ROOT / member / "src" / "kap" / member / "__init__.py").is_file()
    assert not (ROOT / member / "src" / "kap" / "__init__.py").exists()
    assert not (ROOT / member / "__init__.py").exists()


def test_import_platform_from_the_root_is_the_standard_module() -> None:
    code = "import platform, uuid, sys; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert not out[0].startswith(str(ROOT)), out[0]
    assert out[1] == ".".join(map(str, sys.version_info[:3]))


def _kap_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n.split(".")[1] for n in names if n.startswith("kap.") and n.count(".") >= 1}


@pytest.mark.parametrize("member", MEMBERS)
def test_imports_follow_the_dependency_direction(member: str) -> None:
    allowed = ALLOWED[member] | {member}
    for path in (ROOT / member / "src").rglob("*.py"):
        wrong = _kap_imports(path) - allowed
        assert not wrong, f"{path.relative_to(ROOT)} imports kap.{sorted(wrong)}"


@pytest.mark.parametrize("member", MEMBERS)
def test_declared_dependencies_follow_the_dependency_direction(member: str) -> None:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("[")[0].strip() for d in project.get("dependencies", [])}
    kap_deps = {d.removeprefix("kap-") for d in deps if d.startswith("kap-")}
    assert kap_deps == ALLOWED[member]


@pytest.mark.parametrize("member", MEMBERS)
def test_gpu_packages_are_optional_extras_only(member: str) -> None:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    base = " ".join(project.get("dependencies", []))
    assert not any(pkg in base for pkg in GPU_ONLY)


def export(*extra: str) -> set[str]:
    uv = shutil.which("uv") or str(Path.home() / ".local/share/kap-uv/bin/uv")
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--all-packages", "--no-hashes", *extra],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line.split("==")[0].strip() for line in exported.splitlines() if "==" in line}


def test_the_cpu_install_resolves_without_gpu_packages() -> None:
    cpu = export("--extra", "cpu")
    assert {"celery", "neo4j", "faiss-cpu"} <= cpu
    assert not cpu & set(GPU_ONLY)


def test_the_gpu_install_has_one_faiss_the_gpu_one() -> None:
    gpu = export("--extra", "gpu")
    assert {"vllm", "faiss-gpu-cu12"} <= gpu
    assert "faiss-cpu" not in gpu  # both ship the `faiss` module: one would clobber the other


def test_the_extras_cannot_be_combined() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        export("--extra", "cpu", "--extra", "gpu")
    assert "conflict" in refused.value.stderr.lower()
