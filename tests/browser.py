"""Headless Chromium for the tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe`` makes Chromium read commands from its file descriptor 3 and
write replies to 4, each a JSON message ended by a NUL byte. This needs nothing beyond the
standard library: no chromedriver (whose version must match the browser's exactly, and
which Selenium would otherwise try to download), no websocket client, no TCP port that
another process could hold.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$PYRO_VAE_CHROMIUM``, else the first Chromium or Chrome on the PATH."""
    given = os.environ.get("PYRO_VAE_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    return next((p for p in map(shutil.which, NAMES) if p), None)


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or stopped answering."""


class Chromium:
    """One headless browser with one page. ``call`` sends a DevTools command and returns
    its result; events that arrive meanwhile are kept in ``events``."""

    def __init__(self, binary: str, width: int = 1320, height: int = 1040,
                 timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="pyro-vae-chromium-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before exec
            a, b = os.dup(to_browser), os.dup(from_browser)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-dev-shm-usage",
             "--force-device-scale-factor=1", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=on_fds_3_and_4, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next = 0
        self.events: list[dict] = []
        self.session = self._page(width, height)

    def _send(self, method: str, params: dict | None, session: str | None) -> int:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, browser: bool = False) -> dict:
        """Send ``method`` to the page (or, with ``browser``, to the browser) and wait."""
        wanted = self._send(method, params, None if browser else self.session)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def _page(self, width: int, height: int) -> str:
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 browser=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return self.session

    def wait_for_event(self, method: str, since: int = 0) -> dict:
        """The first event ``method`` at index ≥ ``since`` of ``events`` (waiting for it)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            message = self._receive(deadline)
            if "id" not in message:
                self.events.append(message)

    def open(self, path: Path) -> float:
        """Load a local file and wait for its load event; the seconds it took."""
        since = len(self.events)
        start = time.monotonic()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()})
        self.wait_for_event("Page.loadEventFired", since)
        return time.monotonic() - start

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a JSON-able one)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, timeout: float | None = None) -> None:
        """Poll a JavaScript expression until it is true."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.evaluate(expression):
            if time.monotonic() > deadline or self.errors():
                raise BrowserError(f"waiting for {expression}: "
                                   f"{'; '.join(self.errors()) or 'timed out'}")
            time.sleep(0.02)

    def errors(self) -> list[str]:
        """The page's uncaught JavaScript exceptions so far, one line each."""
        out = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                out.append(f"{text} (line {details.get('lineNumber')})")
        return out

    def move_mouse(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page."""
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        Path(path).write_bytes(base64.b64decode(data["data"]))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True)
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
