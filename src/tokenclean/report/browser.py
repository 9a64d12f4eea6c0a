"""Drive a headless Chromium over the DevTools protocol on a pipe (no extra packages, no network port).

Used by the browser test of the HTML report and by ``tokenclean report --screenshot``. Chromium is started
with ``--remote-debugging-pipe``: it reads NUL-terminated JSON commands from file descriptor 3 and writes
NUL-terminated JSON replies and events to descriptor 4. :class:`Chromium` opens one page, collects console
errors, uncaught exceptions, log errors and every requested URL while it is open.

Install Chromium on Debian/Ubuntu with ``apt-get install -y --no-install-recommends chromium``; set
``TOKENCLEAN_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tokenclean.errors import TokencleanError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(TokencleanError):
    """Chromium is missing, did not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: ``$TOKENCLEAN_CHROMIUM`` or the first of :data:`CANDIDATES` on PATH."""
    env = os.environ.get("TOKENCLEAN_CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """Move ``fd`` to a number >= 10 so that placing the child's descriptors 3 and 4 cannot clobber it."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """One headless Chromium with one page; use as a context manager.

    ``errors`` collects console errors/asserts, uncaught exceptions and error log entries (e.g. a failed
    resource load); ``requests`` every URL the page asked for.
    """

    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900, timeout: float = 60):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError(
                "no Chromium found (install: apt-get install -y --no-install-recommends chromium, "
                "or set TOKENCLEAN_CHROMIUM)"
            )
        self.width, self.height, self.timeout = width, height, timeout
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._buf = b""
        self._next_id = 0
        self._session: str | None = None
        self._pid: int | None = None

    # -- process and pipe --------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="tokenclean-chromium-")
        cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())  # we write commands; Chromium reads fd 3
        res_r, res_w = (_high_fd(fd) for fd in os.pipe())  # Chromium writes fd 4; we read
        binary = str(self.binary)
        binary = binary if os.sep in binary else (shutil.which(binary) or binary)
        args = [binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"]
        # posix_spawn maps our pipe ends to the child's descriptors 3 and 4 (dup2 clears close-on-exec on
        # the copies); every other descriptor Python opened is close-on-exec (PEP 446) and stays behind.
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, cmd_r, 3),
            (os.POSIX_SPAWN_DUP2, res_w, 4),
        ]
        try:
            self._pid = os.posix_spawn(binary, args, os.environ, file_actions=actions)
        except OSError as e:
            raise BrowserError(f"cannot start Chromium '{binary}': {e}") from None
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self._w, self._r = cmd_w, res_r
        try:
            self._open_page()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _reap(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for our Chromium to exit; True when it has."""
        deadline = time.monotonic() + timeout
        while self._pid is not None:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._pid = None
            elif time.monotonic() > deadline:
                return False
            else:
                time.sleep(0.05)
        return True

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if getattr(self, "_pid", None) is not None:
            with contextlib.suppress(BrowserError, OSError):
                self.send("Browser.close", timeout=10, session=False)
            if not self._reap(10) and self._pid is not None:
                os.kill(self._pid, signal.SIGKILL)  # our own child, by its pid
                self._reap(10)
        for fd in (getattr(self, "_w", None), getattr(self, "_r", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _write(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._w, data)
            data = data[n:]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise BrowserError("Chromium closed the DevTools pipe (crashed or exited)")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(raw)
        return msg

    def _record(self, msg: dict[str, Any]) -> None:
        method, p = msg.get("method", ""), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.errors.append(f"console.{p['type']}: {args}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))
        self._events.append(msg)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        session: bool = True,
    ) -> dict[str, Any]:
        """Send one DevTools command (to the page's session unless ``session=False``); return its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        self._write(msg)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._record(reply)

    def wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the next event named ``method`` (events already seen count)."""
        for i, ev in enumerate(self._events):
            if ev.get("method") == method:
                return self._events.pop(i)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read_message(deadline)
            self._record(msg)
            if msg.get("method") == method:
                return self._events.pop()

    # -- page ----------------------------------------------------------------------------------------
    def _open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        att = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)
        self._session = att["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def load(self, path_or_url: str | Path) -> None:
        """Navigate to a file (``PATH[#fragment]``) or URL and wait for its load event."""
        url = str(path_or_url)
        if "://" not in url:
            path, hash_, frag = url.partition("#")
            url = Path(path).resolve().as_uri() + hash_ + frag
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        nav = self.send("Page.navigate", {"url": url})
        if "errorText" in nav:
            raise BrowserError(f"cannot open {url}: {nav['errorText']}")
        if "loaderId" in nav:  # a same-document navigation (only the #fragment changed) loads nothing
            self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page; return its JSON value (exceptions raise)."""
        r = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in r:
            raise BrowserError(
                f"JavaScript error: {r['exceptionDetails'].get('text')} in {expression[:80]!r}"
            )
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression[:80]!r}")
            time.sleep(0.05)

    def mouse_move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def screenshot(self, out: str | Path) -> Path:
        """Write a PNG of the current viewport."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out


def screenshot(
    html: str | Path,
    out: str | Path,
    width: int = 1280,
    height: int = 900,
    fragment: str = "",
    scroll_to: str | None = None,
    hover: str | None = None,
) -> Path:
    """Open ``html`` in headless Chromium and write a PNG of one viewport to ``out``.

    ``fragment``: URL fragment (the report reads ``method=...&round=...`` filters from it); ``scroll_to``: a
    CSS selector scrolled to the top; ``hover``: a CSS selector whose first visible match gets the mouse.
    """
    with Chromium(width=width, height=height) as browser:
        browser.load(f"{html}#{fragment}" if fragment else html)
        if scroll_to:
            browser.eval(f"document.querySelector({json.dumps(scroll_to)}).scrollIntoView()")
        if hover:
            xy = browser.eval(HOVER_JS % json.dumps(hover))
            if xy:
                browser.mouse_move(*xy)
        if browser.errors:
            raise BrowserError(f"{html}: page errors: {browser.errors}")
        return browser.screenshot(out)


HOVER_JS = """(function(){
  var els=Array.prototype.filter.call(document.querySelectorAll(%s),function(e){return e.offsetParent!==null;});
  if(!els.length)return null;var r=els[0].getBoundingClientRect();return [r.left+r.width/2,r.top+r.height/2];
})()"""
