"""A small client for headless Chromium over the Chrome DevTools Protocol, standard library only.

The browser runs with `--remote-debugging-pipe`: it reads commands on its fd 3 and writes replies and events on
its fd 4, each a JSON message ended by a NUL byte. Every wait has a deadline, so a hung or crashed browser fails
the test with a message (and the tail of the browser's own log) instead of hanging CI. At the end: helpers for a
page that shows a Snakemake 9 report."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

TIMEOUT = 30.0  # seconds for one command or one wait unless the caller says otherwise


class BrowserError(RuntimeError):
    """The browser did not answer in time, answered with an error, or exited."""


def find_chromium() -> str | None:
    """Debian's `chromium` launcher (package chromium), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser; use as a context manager. `events` holds every event received until now, in order, as
    (method, params, sessionId) tuples, plus ("note", {"label": ...}, sessionId) markers left by Page.note."""

    def __init__(self, binary: str, profile: Path, *, width: int = 1400, height: int = 900, timeout: float = TIMEOUT):
        self.binary, self.profile, self.size, self.timeout = binary, Path(profile), (width, height), timeout
        self.events: list[tuple[str, dict, str | None]] = []
        self._next_id, self._buffer, self._proc = 0, b"", None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.log_path = self.profile / "chromium.log"
        commands_r, self._commands_w = os.pipe()
        self._replies_r, replies_w = os.pipe()
        # Popen passes a descriptor under its own number; bash moves the two ends onto 3 and 4 just before exec.
        # Raised to >= 10 first, so that neither end can already be 3 or 4 when the other is moved there.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_r, replies_w))
        for fd in (commands_r, replies_w):
            os.close(fd)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 f"--user-data-dir={self.profile / 'profile'}", f"--window-size={self.size[0]},{self.size[1]}",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio",
                 "--hide-scrollbars", "about:blank"]
        try:
            with open(self.log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-',
                     self.binary, *flags],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(child_in, child_out),
                    start_new_session=True)  # its own process group: close() can end the browser and its helpers
        finally:
            os.close(child_in)
            os.close(child_out)
        self.send("Target.getTargets")  # the first answer: the browser is up and listening

    def close(self) -> None:
        """Ask the browser to quit; kill its process group if it has not within 10 s."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except BrowserError:
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        finally:
            for name in ("_commands_w", "_replies_r"):
                if (fd := self.__dict__.pop(name, None)) is not None:
                    os.close(fd)

    # ---- the protocol -------------------------------------------------------------------------------------------

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile go to `events`."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands_w, json.dumps(message).encode() + b"\0")
        except OSError as error:
            raise BrowserError(f"cannot send {method}: {error}{self._log_tail()}") from error
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, f"the answer to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    error = reply["error"]
                    raise BrowserError(f"{method} failed: {error.get('message')} {error.get('data', '')}".rstrip())
                return reply.get("result", {})

    def wait_event(self, method: str, *, since: int = 0, session: str | None = None, predicate=None,
                   timeout: float | None = None) -> dict:
        """The params of the first `method` event at or after index `since` of `events` (of `session` if given)
        that satisfies `predicate`, waiting for it if need be."""
        deadline = time.monotonic() + (timeout or self.timeout)
        index = since
        while True:
            while index < len(self.events):
                name, params, sid = self.events[index]
                index += 1
                if name == method and (session is None or sid == session) and (predicate is None or predicate(params)):
                    return params
            self._receive(deadline, f"the event {method}")

    def _receive(self, deadline: float, waiting_for: str) -> dict:
        """The next message; an event is also appended to `events`."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([self._replies_r], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise BrowserError(f"timed out waiting for {waiting_for}{self._log_tail()}")
            chunk = os.read(self._replies_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser exited while waiting for {waiting_for}{self._log_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append((message["method"], message.get("params", {}), message.get("sessionId")))
        return message

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return "\nlast lines of the browser's log:\n" + "\n".join(lines) if lines else ""

    # ---- pages --------------------------------------------------------------------------------------------------

    def new_page(self) -> Page:
        """A fresh tab with the Page, Runtime and Log domains on (console messages and exceptions recorded)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride",  # the viewport exactly, whatever the window decorations
                  {"width": self.size[0], "height": self.size[1], "deviceScaleFactor": 1, "mobile": False})
        return page

    def allow_downloads(self, folder: Path) -> None:
        """Save downloads into `folder` under their GUID, with Browser.downloadWillBegin/Progress events."""
        folder.mkdir(parents=True, exist_ok=True)
        self.send("Browser.setDownloadBehavior",
                  {"behavior": "allowAndName", "downloadPath": str(folder), "eventsEnabled": True})


class Page:
    """One tab, addressed through its flat session."""

    def __init__(self, browser: Chromium, session: str):
        self.browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def navigate(self, url: str, *, timeout: float | None = None) -> None:
        """Open `url` and wait for its load event."""
        mark = len(self.browser.events)
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", since=mark, session=self.session, timeout=timeout)

    def evaluate(self, expression: str, *, timeout: float | None = None):
        """The JSON value of a JavaScript expression (promises awaited); a thrown error raises BrowserError."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if details := result.get("exceptionDetails"):
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression[:200]!r}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, *, timeout: float = 15.0, interval: float = 0.05):
        """Poll a JavaScript expression until it is truthy and return its value; BrowserError naming `what`
        (and the last value seen) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression, timeout=max(deadline - time.monotonic(), 1))
            if value:
                return value
            if time.monotonic() > deadline:
                errors = "".join(f"\n  {error}" for error in self.errors())
                raise BrowserError(f"timed out after {timeout:g} s waiting for {what} (last value: {value!r})"
                                   + (f"; the page's errors until then:{errors}" if errors else ""))
            time.sleep(interval)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def note(self, label: str) -> None:
        """Mark what the page is doing now; `errors` names the last mark before each error."""
        self.browser.events.append(("note", {"label": label}, self.session))

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (failed loads, ...) of this page until now,
        each prefixed with the last `note` before it."""
        found, label = [], "loading"
        for method, params, session in self.browser.events:
            if session != self.session:
                continue
            if method == "note":
                label = params["label"]
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                found.append(f"[{label}] console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                found.append(f"[{label}] uncaught exception: {text}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                text = f"{entry.get('text')} {entry.get('url', '')}".rstrip()
                found.append(f"[{label}] {entry.get('source')} error: {text}")
        return found


# ---- the Snakemake 9 HTML report ---------------------------------------------------------------------------------

# Helpers for a page that shows a Snakemake 9 report (a React single-page app), defined by evaluating this once as
# `window.__wr`. They read the report's own globals: `categories` (category -> subcategory -> result paths),
# `results` (path -> entry with mime_type and data_uri: the file, embedded) and `app` (the React app; app.state is
# the view: navbarMode, content, resultPath), and they click the navbar's links as a reader would.
SNAKEMAKE_REPORT_JS = """window.__wr = {
    registered: () => Object.entries(categories).flatMap(([category, subs]) => Object.entries(subs).flatMap(
        ([sub, paths]) => paths.map(path => [path, results[path].mime_type, category, sub]))),
    links: () => [...document.querySelectorAll('nav a')],
    click(text) {  // a link of the navbar (menu, category or subcategory item) by its text
        const link = this.links().find(a => a.textContent.trim() === text);
        if (link) link.click();
        return Boolean(link);
    },
    home() { document.querySelector('nav ol li a').click(); return true; },  // the breadcrumbs' home icon
    rows: () => [...document.querySelectorAll('nav table tbody tr')],
    rowLabels() { return this.rows().map(row => row.querySelector('td').textContent.trim()); },
    view(i) {  // the row's view button: the path it shows (images) or the data URI it downloads (tables)
        const button = this.rows()[i].querySelector('td:last-child a');
        const href = button.getAttribute('href');
        button.click();
        return href === '#' ? null : Object.keys(results).find(path => results[path].data_uri === href) || href;
    },
    selected(i) { return this.rows()[i].querySelector('td').classList.contains('bg-slate-700'); },
    image(path) {  // the shown figure once it finished loading: [naturalWidth, naturalHeight, shown width]
        const img = [...document.images].find(img => img.getAttribute('src') === results[path].data_uri);
        return img && img.complete ? [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width] : null;
    },
    fromTop(path) {  // the content pane scrolled to its top left: [image top, image left] - [pane top, pane left]
        const img = [...document.images].find(img => img.getAttribute('src') === results[path].data_uri);
        const pane = img.closest('.overflow-auto');
        pane.scrollTop = 0;
        pane.scrollLeft = 0;
        const [i, p] = [img.getBoundingClientRect(), pane.getBoundingClientRect()];
        return [i.top - p.top, i.left - p.left, i.height, p.height];
    },
};
true"""
