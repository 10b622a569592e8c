"""docker-compose.yml and the image Dockerfiles, checked without a Docker engine.

Each test asserts one deployment property of the production compose file (services, health
checks, start order, GPU profile, named volumes only, no literal secrets, pinned images) or of
the Dockerfiles it builds (they exist, install one member, run as a non-root user). The pure
predicates the tests rely on are themselves tested on known-bad samples, so that every
assertion can fail. Where a Docker Compose v2 CLI is installed, `docker compose config -q`
validates the file against the Compose specification too (it needs no engine).

    uv run pytest tests/unit/test_compose.py -q
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kap.platform.queue import CPU_QUEUES, QUEUES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

STORES = ("neo4j", "postgres", "redis")
GPU_SERVICES = ("vllm", "trainer")
KAP_SERVICES = ("migrate", "worker", "ui", "trainer")
EXPECTED_SERVICES = {*STORES, "migrate", "worker", "ui", *GPU_SERVICES}
EXPECTED_DOCKERFILES = {
    "migrate": "workers/Dockerfile",
    "worker": "workers/Dockerfile",
    "ui": "ui/Dockerfile",
    "trainer": "training/Dockerfile",
}
# What each Dockerfile's `uv sync` must select: its own member(s) and nothing else.
DOCKERFILE_SYNC_ARGS = {
    "workers/Dockerfile": "--package kap-workers --extra cpu",
    "ui/Dockerfile": "--package kap-ui --extra cpu",
    "training/Dockerfile": "--package kap-training --package kap-kernels --extra gpu",
}
HEALTH_PROBES = {
    "neo4j": r"cypher-shell|:7474\b",
    "postgres": r"\bpg_isready\b",
    "redis": r"\bredis-cli\b.*\bping\b",
    "vllm": r":8000/health\b",
}
# Services that others may depend on only once their healthcheck passes.
HEALTHY_DEPENDENCIES = {*STORES, "vllm"}
DUMMY_SECRETS = {
    "NEO4J_PASSWORD": "dummy-neo4j-password",
    "POSTGRES_PASSWORD": "dummypostgrespassword",
    "REDIS_PASSWORD": "dummyredispassword",
}

INTERPOLATION = r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\}"
SECRET_KEY = re.compile(r"PASSWORD|AUTH|SECRET|TOKEN|API_KEY", re.IGNORECASE)
REQUIRED_KEY = re.compile(r"PASSWORD|AUTH", re.IGNORECASE)
SECRET_FLAGS = {"-a", "--pass", "--password", "--requirepass", "--api-key", "--token"}
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:(?P<password>\$\{[^}]*\}|[^@\s/]*)@")
NAMED_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ROOT_USERS = {"root", "0"}


# ---- loading ----


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services mapping"
    return found


# ---- pure predicates (each tested on bad samples below) ----


def environment(block: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as a str -> str mapping."""
    env = block.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {pair[0]: (pair[1] if len(pair) > 1 else "") for pair in pairs}
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def secret_is_interpolated(value: str) -> bool:
    """`${VAR...}` (optionally after `user/`) with no literal default standing in for it."""
    match = re.fullmatch(r"(?:[^$/]+/)?" + INTERPOLATION, value)
    return match is not None and (match["op"] in (None, "?", ":?") or match["arg"] == "")


def secret_is_required(value: str) -> bool:
    """An interpolation that makes compose refuse to start while the variable is unset."""
    match = re.fullmatch(r"(?:[^$/]+/)?" + INTERPOLATION, value)
    return match is not None and match["op"] in ("?", ":?")


def is_container_variable(value: str) -> bool:
    """`$$VAR` / `$${VAR}`: compose passes `$VAR` on, the container's shell expands it."""
    return re.fullmatch(r"\$\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", value) is not None


def flag_secrets(args: list[str]) -> list[tuple[str, str]]:
    """(flag, value) for every secret-bearing flag in a command line."""
    flags = SECRET_FLAGS | ({"-p"} if any("cypher-shell" in arg for arg in args) else set())
    found = []
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name in flags and eq:
            found.append((name, inline))
        elif arg in flags and i + 1 < len(args):
            found.append((arg, args[i + 1]))
    return found


def split_words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # not shell (e.g. a `python -c` program with a lone quote)
        return [text]


def command_lines(service: dict[str, Any]) -> Iterator[list[str]]:
    """entrypoint, command and healthcheck of a service, each as a list of arguments.

    A shell string (string form, CMD-SHELL, the script after `-c`) is split into words too.
    """
    health = (service.get("healthcheck") or {}).get("test")
    for value in (service.get("entrypoint"), service.get("command"), health):
        if isinstance(value, str):
            yield split_words(value)
        elif isinstance(value, list):
            args = [str(arg) for arg in value]
            if args and args[0] == "CMD-SHELL":
                args = split_words(" ".join(args[1:]))
            elif args and args[0] == "CMD":
                args = args[1:]
            scripts = [split_words(b) for a, b in itertools.pairwise(args) if a == "-c"]
            yield args + [word for script in scripts for word in script]


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, source) of every mount, short or long form; short forms are typed by source."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            found.append((str(entry.get("type", "volume")), str(entry.get("source", ""))))
        else:
            source = str(entry).split(":", 1)[0]
            is_named = NAMED_VOLUME.fullmatch(source) and ":" in str(entry)
            found.append(("volume" if is_named else "bind", source))
    return found


def is_host_path(kind: str, source: str) -> bool:
    """A mount that reaches into the host's filesystem instead of a named volume."""
    if kind == "tmpfs":
        return False
    return kind != "volume" or source.startswith(("/", ".", "~", "$")) or not source


def image_is_pinned(image: str) -> bool:
    """A digest, or a tag that starts with a version number (`16`, `5.26-community`, `v0.9`)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (`redis`, `localhost:5000/kap`)
        return False
    return tag != "latest" and re.match(r"v?\d+", tag) is not None


def final_user(dockerfile: str) -> str | None:
    """The user of the last stage: its last USER line, or None when it sets none."""
    stage = re.split(r"(?im)^\s*FROM\s", dockerfile)[-1]
    users = re.findall(r"(?im)^\s*USER\s+(\S+)", stage)
    return users[-1] if users else None


def is_root(user: str | None) -> bool:
    return user is None or user.split(":", 1)[0] in ROOT_USERS


def healthcheck_command(service: dict[str, Any]) -> str:
    """The probe a healthcheck runs, as one string; '' when missing or disabled."""
    health = service.get("healthcheck") or {}
    if health.get("disable"):
        return ""
    test = health.get("test")
    if isinstance(test, str):
        return test.strip()
    if isinstance(test, list) and len(test) > 1 and test[0] in ("CMD", "CMD-SHELL"):
        return " ".join(str(arg) for arg in test[1:]).strip()
    return ""


def dependencies(service: dict[str, Any]) -> dict[str, Any]:
    found = service.get("depends_on") or {}
    return found if isinstance(found, dict) else dict.fromkeys(found)


def gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in (d.get("capabilities") or [])]


def dockerfile_path(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def dockerignore_patterns() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("${NEO4J_PASSWORD:?set it}", True),
        ("neo4j/${NEO4J_PASSWORD:?set it}", True),
        ("${HF_TOKEN:-}", True),
        ("hunter2", False),
        ("neo4j/hunter2", False),
        ("${POSTGRES_PASSWORD:-hunter2}", False),
        ("pre${POSTGRES_PASSWORD}", False),
    ],
)
def test_secret_predicate(value: str, *, ok: bool) -> None:
    assert secret_is_interpolated(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("${P:?set P}", True), ("${P?set P}", True), ("${P}", False), ("${P:-}", False)],
)
def test_required_predicate(value: str, *, ok: bool) -> None:
    assert secret_is_required(value) is ok


@pytest.mark.parametrize(
    ("args", "found"),
    [
        (["redis-server", "--requirepass", "hunter2"], [("--requirepass", "hunter2")]),
        (["redis-cli", "-a", "hunter2", "ping"], [("-a", "hunter2")]),
        (["cypher-shell", "-u", "neo4j", "-p", "hunter2"], [("-p", "hunter2")]),
        (["vllm", "serve", "--api-key=hunter2"], [("--api-key", "hunter2")]),
        (["pg_isready", "-p", "5432"], []),
    ],
)
def test_flag_secrets_predicate(args: list[str], found: list[tuple[str, str]]) -> None:
    assert flag_secrets(args) == found


@pytest.mark.parametrize(
    "entry",
    [
        "/srv/kap:/data",
        "./data:/data",
        "../data:/data",
        "~/kap:/data",
        "${HOME}/kap:/data",
        "/data",
        {"type": "bind", "source": "kap-home", "target": "/data"},
        {"type": "volume", "source": "/srv/kap", "target": "/data"},
    ],
)
def test_host_path_predicate_refuses(entry: str | dict[str, str]) -> None:
    ((kind, source),) = mounts({"volumes": [entry]})
    assert is_host_path(kind, source)


@pytest.mark.parametrize(
    "entry", ["kap-home:/var/lib/kap", "kap-home:/var/lib/kap:ro", {"source": "pg", "target": "/d"}]
)
def test_host_path_predicate_accepts_named_volumes(entry: str | dict[str, str]) -> None:
    ((kind, source),) = mounts({"volumes": [entry]})
    assert not is_host_path(kind, source)


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("postgres:16", True),
        ("neo4j:5.26-community", True),
        ("vllm/vllm-openai:v0.32.0", True),
        ("localhost:5000/kap/worker:0.1.0", True),
        ("redis", False),
        ("redis:latest", False),
        ("neo4j:community", False),
        ("localhost:5000/kap", False),
    ],
)
def test_image_pin_predicate(image: str, *, ok: bool) -> None:
    assert image_is_pinned(image) is ok


@pytest.mark.parametrize(
    ("text", "root"),
    [
        ("FROM a\nRUN x\n", True),
        ("FROM a\nUSER kap\nFROM b\nRUN x\n", True),
        ("FROM a\nUSER kap\nUSER root\n", True),
        ("FROM a\nUSER 0:0\n", True),
        ("FROM a AS b\nUSER root\nFROM b\nUSER kap\n", False),
        ("FROM a\nUSER 10001:10001\n", False),
    ],
)
def test_final_user_predicate(text: str, *, root: bool) -> None:
    assert is_root(final_user(text)) is root


# ---- services ----


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= EXPECTED_SERVICES, EXPECTED_SERVICES - set(services)


@pytest.mark.parametrize("name", sorted(HEALTH_PROBES))
def test_service_has_a_real_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    probe = healthcheck_command(services[name])
    assert probe, f"{name}: no healthcheck test command"
    assert re.search(HEALTH_PROBES[name], probe), f"{name}: {probe!r} does not probe the service"


@pytest.mark.parametrize(
    ("name", "image"),
    [("neo4j", r"neo4j:5\.26(-community)?"), ("postgres", r"postgres:16(\.\d+)*")],
    ids=["neo4j", "postgres"],
)
def test_store_image_version(services: dict[str, dict[str, Any]], name: str, image: str) -> None:
    assert re.fullmatch(image, services[name]["image"]), services[name]["image"]


def test_redis_7_keeps_nothing_on_disk(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*", redis["image"]), redis["image"]
    args = [str(arg) for arg in redis["command"]]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert "--requirepass" in args
    assert not redis.get("volumes"), "the broker must not persist anything"


def test_depends_on_is_long_form_with_condition(services: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for name, service in services.items():
        raw = service.get("depends_on")
        if raw is None:
            continue
        assert isinstance(raw, dict), f"{name}: depends_on must be the long form"
        for dep, spec in raw.items():
            assert isinstance(spec, dict) and spec.get("condition"), f"{name} -> {dep}"
            checked += 1
    assert checked, "no depends_on anywhere"


def test_stores_are_awaited_healthy(services: dict[str, dict[str, Any]]) -> None:
    pairs = [
        (name, dep, (spec or {}).get("condition"))
        for name, service in services.items()
        for dep, spec in dependencies(service).items()
        if dep in HEALTHY_DEPENDENCIES
    ]
    assert pairs, "nothing waits for a store"
    assert [p for p in pairs if p[2] != "service_healthy"] == []


def test_migrate_is_awaited_to_completion(services: dict[str, dict[str, Any]]) -> None:
    pairs = [
        (name, (spec or {}).get("condition"))
        for name, service in services.items()
        for dep, spec in dependencies(service).items()
        if dep == "migrate"
    ]
    assert pairs, "nothing waits for migrate"
    assert [p for p in pairs if p[1] != "service_completed_successfully"] == []


def test_migrate_is_a_one_shot_after_postgres(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["kap", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert dependencies(migrate) == {"postgres": {"condition": "service_healthy"}}


def test_worker_waits_for_every_store_and_migrate(services: dict[str, dict[str, Any]]) -> None:
    conditions = {dep: spec["condition"] for dep, spec in dependencies(services["worker"]).items()}
    assert conditions == {
        "neo4j": "service_healthy",
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }


@pytest.mark.parametrize("name", [n for n in KAP_SERVICES if n != "migrate"])
def test_database_clients_wait_for_migrate(services: dict[str, dict[str, Any]], name: str) -> None:
    assert "KAP_DATABASE_URL" in environment(services[name])
    assert dependencies(services[name]).get("migrate") == {
        "condition": "service_completed_successfully"
    }


def consumed_queues(service: dict[str, Any]) -> tuple[str, ...]:
    """The Celery queues a `kap worker --queues a,b` service consumes; () for anything else."""
    command = [str(arg) for arg in service.get("command") or []]
    if command[:2] != ["kap", "worker"] or "--queues" not in command:
        return ()
    return tuple(command[command.index("--queues") + 1].split(","))


@pytest.mark.parametrize(
    ("name", "queues"), [("worker", CPU_QUEUES), ("trainer", ("train",))], ids=["cpu", "gpu"]
)
def test_celery_queues(
    services: dict[str, dict[str, Any]], name: str, queues: tuple[str, ...]
) -> None:
    assert consumed_queues(services[name]) == queues


def test_every_queue_has_a_consumer(services: dict[str, dict[str, Any]]) -> None:
    consumed = {queue for s in services.values() for queue in consumed_queues(s)}
    assert set(QUEUES) - consumed == set()


# ---- gpu profile ----


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_service_is_only_in_gpu_profile(services: dict[str, dict[str, Any]], name: str) -> None:
    assert services[name].get("profiles") == ["gpu"]


def test_cpu_services_start_without_a_profile(services: dict[str, dict[str, Any]]) -> None:
    profiled = [n for n, s in services.items() if s.get("profiles") and n not in GPU_SERVICES]
    assert profiled == []


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_gpu_service_reserves_gpus(services: dict[str, dict[str, Any]], name: str) -> None:
    requests = gpu_requests(services[name])
    assert requests, f"{name}: no GPU device reservation"
    for request in requests:
        assert request.get("driver") == "nvidia"
        assert request.get("count") or request.get("device_ids"), f"{name}: reserves no device"


def test_cpu_services_reserve_no_gpu(services: dict[str, dict[str, Any]]) -> None:
    assert [n for n, s in services.items() if gpu_requests(s) and n not in GPU_SERVICES] == []


def test_vllm_serves_a_model_named_by_the_environment(services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    model = environment(vllm)["VLLM_MODEL"]
    assert re.fullmatch(INTERPOLATION, model), f"VLLM_MODEL is not from the environment: {model}"
    launch = " ".join(" ".join(args) for args in command_lines(vllm))
    assert re.search(r"vllm serve \"?\$\$VLLM_MODEL", launch), launch


# ---- volumes and other host paths ----


def test_no_host_path_volumes(services: dict[str, dict[str, Any]]) -> None:
    all_mounts = [(name, *m) for name, s in services.items() for m in mounts(s)]
    assert all_mounts, "no service mounts anything"
    assert [m for m in all_mounts if is_host_path(m[1], m[2])] == []


def test_mounted_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = {source for s in services.values() for kind, source in mounts(s) if kind == "volume"}
    assert used, "no named volume in use"
    assert used - declared == set()


def test_declared_volumes_are_not_host_binds(compose: dict[str, Any]) -> None:
    opts = {
        name: (spec or {}).get("driver_opts") or {} for name, spec in compose["volumes"].items()
    }
    assert {name: o for name, o in opts.items() if "device" in o or "bind" in str(o)} == {}


def test_no_file_backed_secrets_configs_or_env_files(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    files = [
        (section, name)
        for section in ("secrets", "configs")
        for name, spec in (compose.get(section) or {}).items()
        if "file" in (spec or {})
    ]
    assert files == []
    assert [name for name, s in services.items() if "env_file" in s] == []


# ---- secrets ----


def all_environments(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> dict[str, dict[str, str]]:
    """Every environment mapping: each service's, and each top-level `x-` block (anchors)."""
    blocks = {name: environment(s) for name, s in services.items()}
    for key, value in compose.items():
        if key.startswith("x-") and isinstance(value, dict):
            blocks[key] = environment({"environment": value})
    return blocks


def test_secret_values_are_interpolated(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    secrets = [
        (block, key, value)
        for block, env in all_environments(compose, services).items()
        for key, value in env.items()
        if SECRET_KEY.search(key)
    ]
    assert secrets, "no secret found: the test would pass vacuously"
    assert [s for s in secrets if not secret_is_interpolated(s[2])] == []


def test_passwords_are_required(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    passwords = [
        (block, key, value)
        for block, env in all_environments(compose, services).items()
        for key, value in env.items()
        if REQUIRED_KEY.search(key)
    ]
    assert passwords
    assert [p for p in passwords if not secret_is_required(p[2])] == []


def test_urls_carry_no_literal_password(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    found = [
        (block, key, match["password"])
        for block, env in all_environments(compose, services).items()
        for key, value in env.items()
        for match in URL_PASSWORD.finditer(value)
    ]
    assert found, "no URL with credentials: the test would pass vacuously"
    assert [f for f in found if not secret_is_required(f[2])] == []


def test_command_lines_carry_no_literal_password(services: dict[str, dict[str, Any]]) -> None:
    found = [
        (name, flag, value)
        for name, service in services.items()
        for args in command_lines(service)
        for flag, value in flag_secrets(args)
    ]
    assert found, "no secret flag anywhere: the test would pass vacuously"
    literal = [f for f in found if not (secret_is_required(f[2]) or is_container_variable(f[2]))]
    assert literal == []


def test_kap_services_share_the_kap_env(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    shared = environment({"environment": compose["x-kap-env"]})
    assert {"KAP_NEO4J_URI", "KAP_DATABASE_URL", "KAP_BROKER_URL", "KAP_HOME"} <= set(shared)
    for name in KAP_SERVICES:
        env = environment(services[name])
        assert {k: env.get(k) for k in shared} == shared, name


def test_kap_env_points_at_the_compose_services(compose: dict[str, Any]) -> None:
    env = environment({"environment": compose["x-kap-env"]})
    assert env["KAP_NEO4J_URI"] == "bolt://neo4j:7687"
    assert re.fullmatch(
        r"postgresql\+psycopg://kap:\$\{[^}]+\}@postgres:5432/kap", env["KAP_DATABASE_URL"]
    )
    assert re.fullmatch(r"redis://:\$\{[^}]+\}@redis:6379/\d+", env["KAP_BROKER_URL"])


def test_only_the_ui_publishes_a_port(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, s in services.items() if s.get("ports")] == ["ui"]
    assert any(str(p).endswith(":8501") for p in services["ui"]["ports"])


# ---- images and Dockerfiles ----


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    images = {name: s.get("image", "") for name, s in services.items()}
    assert {name: image for name, image in images.items() if not image_is_pinned(image)} == {}


def test_built_services_use_their_members_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    paths = {name: dockerfile_path(s) for name, s in services.items()}
    built = {name: p.relative_to(ROOT).as_posix() for name, p in paths.items() if p is not None}
    assert built == EXPECTED_DOCKERFILES


def test_named_dockerfiles_exist(services: dict[str, dict[str, Any]]) -> None:
    paths = [dockerfile_path(s) for s in services.values()]
    named = [p for p in paths if p is not None]
    assert named, "no service builds an image"
    assert [p for p in named if not p.is_file()] == []


@pytest.mark.parametrize("path", sorted(DOCKERFILE_SYNC_ARGS))
def test_dockerfile_runs_as_non_root(path: str) -> None:
    user = final_user((ROOT / path).read_text())
    assert not is_root(user), f"{path}: final stage runs as {user or 'root (no USER)'}"


@pytest.mark.parametrize("path", sorted(DOCKERFILE_SYNC_ARGS))
def test_dockerfile_is_multi_stage_with_official_uv(path: str) -> None:
    text = (ROOT / path).read_text()
    assert len(re.findall(r"(?im)^\s*FROM\s", text)) >= 2, f"{path}: single stage"
    assert re.search(r"COPY --from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ /uv ", text), path


@pytest.mark.parametrize(("path", "selection"), sorted(DOCKERFILE_SYNC_ARGS.items()))
def test_dockerfile_installs_only_its_member(path: str, selection: str) -> None:
    logical_lines = (ROOT / path).read_text().replace("\\\n", " ")
    syncs = [" ".join(cmd.split()) for cmd in re.findall(r"uv sync[^\n]*", logical_lines)]
    assert syncs, f"{path}: no uv sync"
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
        packages = " ".join(re.findall(r"--(?:package|extra) \S+", sync))
        assert packages == selection, sync


def test_worker_image_carries_the_migrations() -> None:
    text = (ROOT / "workers" / "Dockerfile").read_text()
    assert re.search(r"(?m)^COPY alembic\.ini ", text)
    assert re.search(r"(?m)^COPY migrations/? ", text)
    assert "KAP_MIGRATIONS_DIR=" in text


def test_dockerignore_keeps_state_and_caches_out() -> None:
    patterns = dockerignore_patterns()
    required = {".git", ".venv", ".kap*", ".env", "**/target", "**/__pycache__"}
    assert required - patterns == set()


# ---- the Compose CLI itself (no engine needed) ----


def compose_cli(docker: str) -> list[str] | None:
    """`docker compose` (v2 plugin) or a standalone v2+ `docker-compose`; None when absent."""
    probe = subprocess.run(
        [docker, "compose", "version", "--short"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and not probe.stdout.strip().startswith("1."):
            return [standalone]
    return None


def run_compose_config(
    profiles: list[str], env_overrides: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    cli = compose_cli(docker)
    if cli is None:
        # An extra check only: the structural tests above validate the file without Docker.
        pytest.skip("docker CLI present, Compose v2 plugin not installed")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DUMMY_SECRETS and not k.startswith("COMPOSE_")
    }
    env.update(env_overrides)
    args = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    args += ["--env-file", os.devnull]
    args += [flag for profile in profiles for flag in ("--profile", profile)]
    return subprocess.run(
        [*args, "config", "-q"], capture_output=True, text=True, env=env, check=False, timeout=60
    )


@pytest.mark.parametrize("profiles", [[], ["gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_the_file(profiles: list[str]) -> None:
    result = run_compose_config(profiles, DUMMY_SECRETS)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_refuses_missing_passwords() -> None:
    result = run_compose_config([], {})
    assert result.returncode != 0
    assert "PASSWORD" in result.stderr
