"""A real browser for the page tests: Debian's chromium driven by Playwright, and axe-core
(from npm) injected into pages to find accessibility violations.

Neither is downloaded by Playwright (`playwright install` is never run): `.ci/run`
installs chromium with apt and axe-core with npm. Outside CI a missing one skips
the browser tests with the command that installs it; in CI it fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE_VERSION = "4.14.1"
AXE_HOME = ROOT / ".cache" / "axe"
AXE_JS = AXE_HOME / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "artifacts"


def missing(what: str, how: str) -> None:
    message = f"{what} is not installed: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def install_axe() -> Path:
    """axe-core from npm, pinned, into a git-ignored folder of the project."""
    if AXE_JS.exists():
        return AXE_JS
    npm = shutil.which("npm")
    if npm is None:
        missing("npm (for axe-core)", "apt-get install -y npm")
    AXE_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(npm),
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(AXE_HOME),
            f"axe-core@{AXE_VERSION}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return AXE_JS


@pytest.fixture(scope="session")
def axe_source() -> str:
    return install_axe().read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing("chromium", "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def screenshot(page: Any, name: str) -> Path:
    """The final page of a test, kept under artifacts/ (git-ignored) to look at."""
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


SERIOUS = ("serious", "critical")


def check_accessibility(page: Any, axe_js: str, name: str) -> list[dict[str, Any]]:
    """Run axe-core in the page; no serious or critical violation may be left."""
    page.evaluate(axe_js)
    result = page.evaluate("async () => await axe.run(document)")
    assert result["testEngine"]["name"] == "axe-core" and result["passes"], "axe did not run"
    violations = [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]],
        }
        for v in result["violations"]
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(violations, indent=2))
    serious = [v for v in violations if v["impact"] in SERIOUS]
    assert serious == [], json.dumps(serious, indent=2)
    return violations
