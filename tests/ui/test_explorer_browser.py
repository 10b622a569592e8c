"""The explorer in a real headless Chromium: `kap ui` serves it, the browser renders the Graph
and Trajectories pages from URLs (query parameters pick the entity and the trajectory), and
the test reads the rendered DOM and saves screenshots (into the test's tmp dir, and into
$KAP_ARTIFACTS when set).

Chromium and chromedriver must be Debian's packages: when missing, the test fails and says to
run scripts/setup.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ui.browser import Browser, free_port, programs, stop_group
from tests.ui.conftest import KAP, explorer_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def explorer(
    ui_env: dict[str, str], campaign: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`kap ui --port P` against the filled stores, as a user starts it; its base URL."""
    programs()  # fail first, and clearly, when the browser is missing
    port, logs = free_port(), tmp_path_factory.mktemp("explorer")
    with (logs / "ui.log").open("wb") as log:
        proc = subprocess.Popen([KAP, "ui", "--port", str(port)], env=explorer_env(ui_env),
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (logs / "ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("kap ui did not answer its health check within 60 s")
        assert f"kap explorer: {url}/" in (logs / "ui.log").read_text()
        yield url
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chrome = Browser(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log")
    yield chrome
    chrome.close()


def keep(shot: Path) -> None:
    """Copy a screenshot into $KAP_ARTIFACTS, where CI collects them."""
    if folder := os.environ.get("KAP_ARTIFACTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)


def check_rendered(browser: Browser, expected: str) -> str:
    shown = browser.wait_for_text(expected)
    assert browser.count('[data-testid="stException"]') == 0, shown[:2000]
    assert "Traceback" not in browser.dom()
    return shown


def test_the_graph_page_renders_an_entity_region_in_chromium(
    explorer: str, browser: Browser, owner_engine: sa.Engine, campaign: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    with owner_engine.connect() as conn:
        start_id, start = conn.execute(sa.text(
            "SELECT region ->> 'start_id', region ->> 'start' FROM tasks WHERE campaign_id = :c "
            "AND accepted ORDER BY created_at LIMIT 1"),
            {"c": campaign["campaign_id"]}).one()  # fmt: skip
    browser.open(f"{explorer}/graph?entity={start_id}")
    shown = check_rendered(browser, "Regions and tasks")
    assert start in shown and "within 2 hops" in shown
    assert browser.count(".vega-embed canvas, .vega-embed svg") >= 1  # the neighbourhood drawn
    shot = browser.screenshot(tmp_path / "explorer-graph.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    keep(shot)
    # a click on another node selects it: the panels below follow it
    nodes = ".vega-embed g.mark-symbol path"
    labels = browser.script(
        f"return [...document.querySelectorAll({nodes!r})].map(p => p.getAttribute('aria-label'))"
    )
    other = next(i for i, label in enumerate(labels) if label and "role: focus" not in label)
    name = re.search(r"name: (.*?); id:", labels[other]).group(1)  # type: ignore[union-attr]
    browser.click(nodes, other)
    check_rendered(browser, f"Centre the graph on {name}")
    keep(browser.screenshot(tmp_path / "explorer-graph-selected.png"))


def test_the_trajectories_page_renders_a_trajectory_in_chromium(
    explorer: str, browser: Browser, owner_engine: sa.Engine, campaign: dict[str, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    with owner_engine.connect() as conn:
        trajectory_id, question = conn.execute(sa.text(
            "SELECT t.id::text, k.question FROM trajectories t JOIN tasks k ON k.id = t.task_id "
            "WHERE t.campaign_id = :c ORDER BY t.n_turns DESC LIMIT 1"),
            {"c": campaign["campaign_id"]}).one()  # fmt: skip
    browser.open(f"{explorer}/trajectories?trajectory={trajectory_id}")
    shown = check_rendered(browser, question)
    assert "t=0" in shown and "Final answer" in shown
    shot = browser.screenshot(tmp_path / "explorer-trajectory.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    keep(shot)
