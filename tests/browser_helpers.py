"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket, via aiohttp):
navigate, type, click, evaluate script, take PNG screenshots. Chromium runs with a new
empty profile and no background networking; it is killed at close.

Without a Chromium the tests that need one skip, except under CI, where .ci/run installs
Debian's ``chromium`` and a missing browser is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--window-size=1100,1400",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


def spki_pin(cert_pem: Path) -> str:
    """Chromium's pin of a certificate: base64 SHA-256 of its SubjectPublicKeyInfo."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def chromium_path() -> str:
    """The browser to run; skips the test without one (fails it under CI)."""
    for name in (os.environ.get("EDGISTRY_CHROMIUM"), *CHROMIUM_NAMES):
        found = shutil.which(name) if name else None
        if found:
            return found
    if in_ci():
        pytest.fail("no Chromium on PATH: CI must install Debian's chromium (see .ci/run)")
    pytest.skip("no Chromium on PATH (apt-get install chromium)")


class Browser:
    """One headless Chromium and one page of it (``async with Browser() as b``)."""

    def __init__(self, timeout: float = 20.0, trust_cert: Path | None = None) -> None:
        self.timeout = timeout
        # trust exactly this certificate's key (a gateway's self-signed one), as a pinning client does
        self.flags = [f"--ignore-certificate-errors-spki-list={spki_pin(trust_cert)}"] if trust_cert else []
        self.profile = Path(tempfile.mkdtemp(prefix="edgistry-chromium-"))
        self.proc: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws = None
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._events: list[dict] = []
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Browser:
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, *self.flags, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "TMPDIR": str(self.profile)})  # its scratch goes too
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                await self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        pages = []
        while not pages:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json(content_type=None) if t.get("type") == "page"]
            if not pages:
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id"), None) if "id" in data else None
            if fut is not None and not fut.done():
                fut.set_result(data)
            elif "method" in data:
                self._events.append(data)

    async def send(self, method: str, **params) -> dict:
        """One DevTools call; its result (RuntimeError with the browser's error)."""
        self._id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self._ws.send_str(json.dumps({"id": self._id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, self.timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for ev in self._events:
                if ev["method"] == method:
                    self._events.remove(ev)
                    return ev
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {method} within {self.timeout} s")

    async def js(self, expression: str):
        """Evaluate ``expression`` in the page (awaiting a promise); its JSON value."""
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def until(self, expression: str, timeout: float | None = None):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = await self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self):
        """The page as a PIL image (RGB)."""
        from PIL import Image

        data = await self.send("Page.captureScreenshot", format="png")
        return Image.open(io.BytesIO(base64.b64decode(data["data"]))).convert("RGB")
