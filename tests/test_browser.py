"""The demo page in headless Chromium, driven over the DevTools protocol with the websockets client.

Skips when /usr/bin/chromium is missing (Debian: apt-get install chromium); CI installs it.
"""
import asyncio
import itertools
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from speechmtp.engine import Engine, SynthesisOptions, build_tiny_checkpoint
from speechmtp.server import ServerConfig, TTSServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium "
                                                              "(Debian package `chromium`)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0", "about:blank"]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    torch.set_num_threads(1)
    eng = Engine.load(build_tiny_checkpoint(tmp_path_factory.mktemp("voice")), device="cpu",
                      defaults=SynthesisOptions(max_frames=24))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = TTSServer({"default": eng}, ServerConfig())
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(30)
    yield f"http://127.0.0.1:{server.port}/"
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    eng.close()


@pytest.fixture
def chromium(tmp_path):
    proc = subprocess.Popen([str(CHROMIUM), f"--user-data-dir={tmp_path / 'profile'}", *FLAGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        url = None
        while time.time() < deadline and url is None:  # Chromium prints its DevTools address on stderr
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            url = m.group(1) if m else None
        if url is None:
            pytest.fail("Chromium did not start its DevTools endpoint")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining so it never blocks
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


class CDP:
    """Minimal DevTools client: send a command, wait for its reply."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def __call__(self, method, **params):
        i = next(self.ids)
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expr):
        r = await self("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")


def test_demo_page_streams_and_schedules_audio(server_url, chromium):
    from websockets.asyncio.client import connect

    async def go():
        async with connect(chromium, max_size=2**24) as bws:
            target = (await CDP(bws)("Target.createTarget", url=server_url))["targetId"]
        page_ws = chromium.split("/devtools/")[0] + f"/devtools/page/{target}"
        async with connect(page_ws, max_size=2**24) as pws:
            cdp = CDP(pws)
            for _ in range(100):  # wait for the page to load
                if await cdp.eval("document.readyState === 'complete' && typeof window.speak === 'function'"):
                    break
                await asyncio.sleep(0.1)
            done = await cdp.eval("window.speak('Hello from the browser. It streams.', {seed: 3})")
            stats = await cdp.eval("window.__stats")
            return done, stats

    done, stats = asyncio.run(asyncio.wait_for(go(), 90))
    assert done["type"] == "done" and not done["cancelled"]
    assert stats["contextState"] == "running"
    assert stats["bytesReceived"] > 0 and stats["bytesReceived"] == 2 * done["audio"]["samples"]
    assert stats["samplesScheduled"] == done["audio"]["samples"]  # every sample was put on the clock
    assert stats["chunks"] == done["audio"]["chunks"] and stats["ttfaMs"] > 0
