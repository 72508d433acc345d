"""Open a page in headless Chromium and look at it through the DevTools protocol.

The protocol runs over a pipe (``--remote-debugging-pipe``: commands on fd 3, replies on
fd 4, NUL-separated JSON), so no websocket library and no port are needed. The page gets
console errors, uncaught exceptions, browser log errors and every network request recorded,
then a script of ours is evaluated in it.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """``$LEITAI_CHROMIUM``, or Debian's ``chromium`` (or a Chrome) on the PATH."""
    env = os.environ.get("LEITAI_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium process, driven over its DevTools pipe."""

    def __init__(self, executable: str, timeout: float = 60):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="leitai-chromium-")
        self.log = Path(self.profile + ".log")
        # Our pipe ends are moved to fds >= 10 first, so that dup2 onto 3 and 4 in the child
        # never has overlapping sources and always clears close-on-exec.
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def fds():  # in the child, before exec: Chromium reads fd 3 and writes fd 4
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        try:
            # close_fds=False keeps 3 and 4 open; Python's own fds are close-on-exec anyway
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    preexec_fn=fds, close_fds=False,
                )
        finally:
            os.close(child_r)
            os.close(child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    err = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"chromium closed its DevTools pipe: {err}")
                self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        """The first event called ``method``, waiting for it if it has not come yet."""
        deadline = time.monotonic() + self.timeout
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        while True:
            ev = self._read_message(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev


@contextmanager
def open_page(executable: str, page: Path, width: int = 1200, height: int = 900):
    """A browser with ``page`` loaded in a ``width`` × ``height`` viewport: yields the
    :class:`Browser` and the page's DevTools session id."""
    with Browser(executable) as b:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride",
               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=s)
        b.send("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
        b.wait_for("Page.loadEventFired")
        yield b, s


def evaluate(b: Browser, session: str, script: str):
    """The value of ``script`` (an async JS function body) in the page."""
    value = b.send("Runtime.evaluate", {
        "expression": f"(async () => {{ {script} }})()", "awaitPromise": True, "returnByValue": True,
    }, session=session)
    if "exceptionDetails" in value:
        raise RuntimeError(f"check script failed: {value['exceptionDetails']}")
    return value["result"].get("value")


def inspect(executable: str, page: Path, script: str, width: int = 1200, height: int = 900) -> dict:
    """Load ``page`` and return what happened: the value of ``script`` (an async JS function
    body, evaluated after the load event), console errors, exceptions, log errors and requests."""
    with open_page(executable, page, width, height) as (b, s):
        value = evaluate(b, s, script)
        events = b.events
    return {
        "value": value,
        "console_errors": [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
                           and e["params"].get("type") in ("error", "assert")],
        "exceptions": [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"],
        "log_errors": [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                       and e["params"]["entry"].get("level") == "error"],
        "requests": [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"],
    }


def screenshot(b: Browser, session: str, clip: dict | None = None) -> bytes:
    """A PNG of the page's viewport, or of ``clip`` (``{x, y, width, height}`` in CSS pixels)."""
    import base64

    params = {"format": "png", "captureBeyondViewport": bool(clip)}
    if clip:
        params["clip"] = {**clip, "scale": 1}
    return base64.b64decode(b.send("Page.captureScreenshot", params, session=session)["data"])
