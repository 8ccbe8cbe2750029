# Static checks of docker-compose.yml (no docker engine needed).
#
# tests/data/compose-spec.json is the official Compose Specification JSON schema
# ($id "compose_spec.json", title "Compose Specification", draft 2020-12), vendored
# byte-for-byte from the PyPI package check-jsonschema 0.39.0, file
# check_jsonschema/builtin_schemas/vendor/compose-spec.json (upstream:
# github.com/compose-spec/compose-spec schema/compose-spec.json, Apache-2.0),
# sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64.
# To refresh: pip install -U check-jsonschema and copy that file over.
#
# Needs: pyyaml, jsonschema (>=4.0 for draft 2020-12 / unevaluatedProperties).
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

APP_SERVICES = ("migrate", "web", "worker", "beat", "localstripe")
NO_HEALTHCHECK_OK = {"migrate", "beat", "localstripe"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    raw = SCHEMA_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, (
        "tests/data/compose-spec.json changed: update SCHEMA_SHA256 and the provenance comment"
    )
    data: dict[str, Any] = json.loads(raw)
    return data


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML resolves `*alias` to the very same Python object as its `&anchor`,
    # which the anchor test below relies on.
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def test_compose_file_is_valid_against_compose_spec(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    errors = _errors(validator, compose)
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(
        errors
    )


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d["services"]["web"].update(bogus_key=1), id="unknown-service-key"),
        pytest.param(lambda d: d.update(bogus_top=1), id="unknown-top-level-key"),
        pytest.param(
            lambda d: d["services"]["web"]["depends_on"]["migrate"].update(condition="done"),
            id="bad-depends-on-condition",
        ),
        pytest.param(
            lambda d: d["services"]["web"]["healthcheck"].update(intervall="5s"),
            id="typo-in-healthcheck",
        ),
    ],
)
def test_schema_actually_rejects_broken_files(
    validator: jsonschema.protocols.Validator, compose: dict[str, Any], mutate: Any
) -> None:
    """Guard against a vacuous schema/validator that accepts anything."""
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert _errors(validator, broken)


def test_expected_services_present(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker",
        "beat",
        "localstripe",
        "flower",
    }


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in NO_HEALTHCHECK_OK:
            continue
        hc = svc.get("healthcheck")
        assert hc, f"service {name!r} has no healthcheck"
        assert not hc.get("disable", False), f"service {name!r} disables its healthcheck"
        assert hc.get("test"), f"service {name!r} healthcheck has no test"


def test_healthy_conditions_point_at_services_with_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            continue
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            if spec.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep} healthy but {dep} has no healthcheck"
                )


def test_web_waits_for_migrations(compose: dict[str, Any]) -> None:
    deps = compose["services"]["web"]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert compose["services"]["migrate"]["restart"] == "no"


def test_localstripe_only_in_dev_profile_and_flower_in_ops(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name == "localstripe":
            assert svc.get("profiles") == ["dev"]
        elif name == "flower":
            assert svc.get("profiles") == ["ops"]
        else:
            assert "profiles" not in svc, f"service {name!r} must not be behind a profile"


def test_flower_asks_for_a_password_and_watches_the_app_broker(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in " ".join(flower["command"])
    assert flower["environment"] is compose["x-app-env"]  # REDIS_URL: the workers' broker


def test_app_services_share_the_env_anchor(compose: dict[str, Any]) -> None:
    anchor = compose["x-app-env"]
    for name in ("web", "worker", "beat"):
        env = compose["services"][name]["environment"]
        assert env is anchor, f"service {name!r} does not use the *app-env anchor"
    for name in APP_SERVICES:
        assert compose["services"][name]["environment"] == anchor
    assert anchor["DATABASE_URL"] == "postgresql+psycopg://postgres:seats@postgres:5432/seats"
    assert anchor["REDIS_URL"] == "redis://redis:6379/0"
    assert anchor["SECRET_KEY"] == "${SECRET_KEY:?set SECRET_KEY}"
    # no test value can leak into production: a forgotten secret stops compose
    for key in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        assert anchor[key].startswith("${" + key + ":?"), key
    assert anchor["STRIPE_API_BASE"] == "${STRIPE_API_BASE:-}"  # unset: Stripe's own API


def _named_volume(entry: Any) -> str | None:
    """Return the named-volume source of a service `volumes:` entry, or None for binds/tmpfs."""
    if isinstance(entry, dict):
        if entry.get("type", "volume") != "volume":
            return None
        src = entry.get("source")
        return str(src) if src else None  # no source = anonymous volume
    parts = str(entry).split(":")
    if len(parts) < 2:
        return None  # "/path" alone = anonymous volume
    src = parts[0]
    if not src or src.startswith((".", "/", "~", "$")):
        return None  # bind mount (or interpolated path)
    return src


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, svc in compose["services"].items():
        for entry in svc.get("volumes", []):
            vol = _named_volume(entry)
            if vol is not None:
                assert vol in declared, f"service {name!r} uses undeclared volume {vol!r}"
                used.add(vol)
    assert used, "expected postgres/redis data on named volumes"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def test_the_worker_consumes_every_queue_the_code_sends_to(compose: dict[str, Any]) -> None:
    from shared import queues

    command = compose["services"]["worker"]["command"]
    consumed = command[command.index("-Q") + 1].split(",")
    assert sorted(consumed) == sorted(queues.ALL)
    assert set(queues.ROUTES.values()) <= set(consumed)
