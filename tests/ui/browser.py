"""A real headless Chromium driven through chromedriver's W3C WebDriver HTTP API, with the
standard library only (no selenium): open a URL, wait until the page shows a text, read the
DOM, take a screenshot.

Streamlit renders in the browser over a websocket after the page has loaded, so a one-shot
`chromium --dump-dom` sees only the skeleton (virtual time does not wait for the socket);
polling the live DOM until the expected text appears does.

Both programs come from Debian (`chromium`, `chromium-driver`), installed by scripts/setup.sh.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SETUP_HINT = "run scripts/setup.sh as root (it installs Debian's chromium and chromium-driver)"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--window-size=1400,1800"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def programs() -> tuple[str, str]:
    """Chromium and chromedriver, or an AssertionError naming the fix."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert chromium, f"chromium is not installed: {SETUP_HINT}"
    assert driver, f"chromedriver is not installed: {SETUP_HINT}"
    return chromium, driver


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, log: Path) -> None:
        chromium, driver = programs()
        self.port = free_port()
        self.proc = subprocess.Popen([driver, f"--port={self.port}", f"--log-path={log}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        self._wait_ready()
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": ARGS}}
        reply = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.session = reply["sessionId"]

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                         method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return json.loads(reply.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError("chromedriver did not start")

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def script(self, source: str) -> Any:
        return self._call("POST", self._s("/execute/sync"), {"script": source, "args": []})

    def wait_for_text(self, text: str, timeout: float = 60.0) -> str:
        """Poll the rendered page until its visible text contains `text` and Streamlit has
        finished running the script; that visible text (or AssertionError with what showed)."""
        deadline, shown = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            shown = str(self.script("return document.body.innerText"))
            running = self.script(
                "return document.querySelector('[data-testid=\"stStatusWidget\"]') !== null"
            )
            if text in shown and not running:
                return shown
            time.sleep(0.5)
        raise AssertionError(f"the page never showed {text!r}; it showed:\n{shown[:2000]}")

    def click(self, selector: str, index: int = 0) -> None:
        """Click the `index`-th element that matches the CSS `selector`, as a user would."""
        found = self._call("POST", self._s("/elements"), {"using": "css selector",
                                                          "value": selector})  # fmt: skip
        assert len(found) > index, f"no element {index} matches {selector!r}"
        element = next(iter(found[index].values()))
        self._call("POST", self._s(f"/element/{element}/click"), {})

    def count(self, selector: str) -> int:
        return int(self.script(f"return document.querySelectorAll({json.dumps(selector)}).length"))

    def dom(self) -> str:
        return str(self.script("return document.documentElement.outerHTML"))

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def close(self) -> None:
        try:
            self._call("DELETE", self._s(""))
        finally:
            stop_group(self.proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group `proc` leads (started with start_new_session), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
