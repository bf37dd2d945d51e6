"""A real server on 127.0.0.1:0 and real websockets clients, on a tiny random voice."""
import asyncio
import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from speechmtp.audio_format import decode_bytes, float_to_pcm16
from speechmtp.client import stream_tts
from speechmtp.engine import Engine, SynthesisOptions, build_tiny_checkpoint
from speechmtp.protocol import Limits
from speechmtp.server import ServerConfig, TTSServer
from speechmtp.utils import SpeechMTPError

KEY = "test-key"
TEXT = "Hello there. How are you today? Fine, thanks."
SAMPLING = dict(temperature=0.9, seed=5)


class ServerThread:
    """The server on its own event loop thread, as in production; tests drive clients with asyncio.run."""

    def __init__(self, engines, cfg):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = TTSServer(engines, cfg)
        self.call(self.server.start("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.server.port}/ws"
        self.http = f"http://127.0.0.1:{self.server.port}"

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def tasks(self) -> int:
        async def count():
            return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
        return self.call(count())

    def stop(self):
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    ck = build_tiny_checkpoint(tmp_path_factory.mktemp("voice"))
    eng = Engine.load(ck, device="cpu", max_batch=4, defaults=SynthesisOptions(max_frames=24))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def srv(engine):
    limits = Limits(max_text_chars=2000, max_message_bytes=8192, idle_timeout_s=2.0, send_timeout_s=5.0)
    s = ServerThread({"default": engine}, ServerConfig(max_sessions=12, limits=limits, api_key=KEY))
    yield s
    s.stop()


def offline_pcm(engine, text=TEXT, **kw) -> bytes:
    wav = engine.synthesize(text, engine.options(**{**SAMPLING, **kw}))
    return float_to_pcm16(wav).astype("<i2").tobytes()


async def session(url, chunks, **cfg):
    return await stream_tts(url, chunks, api_key=KEY, **{**SAMPLING, **cfg})


async def expect_error(url, first, then=None, key=True, headers=None):
    """Send messages; return (error message or None, close code)."""
    async with connect(url, additional_headers=headers) as ws:
        msgs = [first] if then is None else [first, *then]
        err = None
        try:
            for m in msgs:
                await ws.send(m)
            async for m in ws:
                if isinstance(m, str) and json.loads(m)["type"] == "error":
                    err = json.loads(m)
        except ConnectionClosed:
            pass
        return err, ws.close_code


def cfg_msg(**kw):
    return json.dumps({"type": "config", "api_key": KEY, **kw})


# -- correctness ------------------------------------------------------------------------------------
def test_streamed_equals_offline_sample_for_sample(srv, engine):
    res = asyncio.run(session(srv.url, [TEXT], audio_events=True))
    assert res.ready["audio"] == {"format": "pcm16", "sample_rate": 16000, "channels": 1}
    assert bytes(res.audio) == offline_pcm(engine)
    metas = [e for e in res.events if e["type"] == "audio"]
    assert len(metas) == len(res.chunk_times) > 2
    assert [m["offset"] for m in metas] == list(np.cumsum([0] + [m["samples"] for m in metas[:-1]]))
    t = res.done["timings"]
    assert t["frames"] > 0 and t["ttfa_ms"] > 0 and t["rtf"] > 0 and t["accepted_per_step"] >= 1
    assert res.done["audio"]["samples"] == len(res.audio) // 2 and res.close_code == 1000


def test_incremental_text_flush_end(srv, engine):
    async def go():
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg(**SAMPLING))
            assert json.loads(await ws.recv())["type"] == "ready"
            for piece in ["Hello th", "ere. How are", " you today? Fine, ", "thanks."]:
                await ws.send(json.dumps({"type": "text", "text": piece}))
            await ws.send(json.dumps({"type": "end"}))
            pcm, kinds = bytearray(), []
            async for m in ws:
                if isinstance(m, bytes):
                    pcm += m
                else:
                    kinds.append(json.loads(m)["type"])
            return bytes(pcm), kinds, ws.close_code

    pcm, kinds, code = asyncio.run(go())
    assert pcm == offline_pcm(engine)  # text in pieces: same sentences, same audio
    assert kinds == ["done"] and code == 1000

    async def flushing():
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg(**SAMPLING))
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": "No full stop here"}))
            await ws.send(json.dumps({"type": "flush"}))
            n = 0
            while True:
                m = await ws.recv()
                if isinstance(m, bytes):
                    n += len(m)
                    continue
                ev = json.loads(m)
                assert ev["type"] == "flushed" and ev["flush_id"] == 1
                break
            assert n > 0  # the buffer's audio came before "flushed"
            await ws.send(json.dumps({"type": "text", "text": "More words.", "flush": True}))
            await ws.send(json.dumps({"type": "end"}))
            kinds = [json.loads(m)["type"] async for m in ws if isinstance(m, str)]
            return kinds

    assert asyncio.run(flushing()) == ["flushed", "done"]


def test_cancel_stops_at_once(srv, engine):
    async def go():
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg(chunk_frames=2))
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": "One. Two. Three. Four. Five. Six. " * 3}))
            while not isinstance(await ws.recv(), bytes):
                pass
            await ws.send(json.dumps({"type": "cancel"}))
            done = None
            async for m in ws:
                if isinstance(m, str):
                    done = json.loads(m)
            return done, ws.close_code

    done, code = asyncio.run(go())
    assert done["type"] == "done" and done["cancelled"] is True and code == 1000
    assert done["timings"]["sentences"] < 18  # it did not run to the end
    wait_idle(srv, engine)


def test_formats_and_rates(srv, engine):
    base = asyncio.run(session(srv.url, [TEXT]))
    n = len(base.audio) // 2
    for rate in (8000, 24000, 48000):
        r = asyncio.run(session(srv.url, [TEXT], sample_rate=rate))
        assert r.sample_rate == rate
        assert abs(len(r.audio) // 2 - n * rate / 16000) <= 2  # same speech, length scales with the rate
    pcm8 = asyncio.run(session(srv.url, [TEXT], sample_rate=8000))
    mu = asyncio.run(session(srv.url, [TEXT], format="mulaw"))
    assert mu.ready["audio"] == {"format": "mulaw", "sample_rate": 8000, "channels": 1}
    assert len(mu.audio) == len(pcm8.audio) // 2  # one byte a sample
    a, b = decode_bytes(bytes(mu.audio), "mulaw"), pcm8.samples()
    assert np.abs(a - b).max() < 0.01 + 0.07 * np.abs(b).max()  # µ-law is 8-bit log PCM of the same signal


# -- bad input, with a healthy session running alongside ------------------------------------------------
def test_bad_input_gets_documented_codes_and_spares_others(srv, engine):
    long_text = "x" * 3000
    cases = {  # name: (messages, expected error code, expected close code)
        "invalid_json": ([cfg_msg(), "{nope"], "invalid_json", 1007),
        "binary": ([cfg_msg(), b"\x01\x02"], "binary_not_supported", 1003),
        "before_config": ([json.dumps({"type": "text", "text": "hi"})], "not_configured", 1008),
        "bad_config_type": ([cfg_msg(temperature="hot")], "invalid_config", 1008),
        "wrong_key": ([json.dumps({"type": "config", "api_key": "nope"})], "unauthorized", 1008),
        "no_key": ([json.dumps({"type": "config"})], "unauthorized", 1008),
        "unknown_voice": ([cfg_msg(voice="nobody")], "unknown_voice", 1008),
        "text_limit": ([cfg_msg(), json.dumps({"type": "text", "text": "a " * 1001})], "text_limit", 1008),
        "idle": ([cfg_msg()], "idle_timeout", 1008),
    }

    async def non_fatal():
        """Non-fatal errors: error frame, then the session still works to the end."""
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg(**SAMPLING))
            await ws.recv()
            codes = []
            for m in ['{"type":"speak"}', '{"type":"text","text":5}', '{"type":"text","text":"  "}', "[1]"]:
                await ws.send(m)
                codes.append(json.loads(await ws.recv())["code"])
            await ws.send(json.dumps({"type": "text", "text": TEXT}))
            await ws.send(json.dumps({"type": "end"}))
            pcm = bytearray()
            async for m in ws:
                if isinstance(m, bytes):
                    pcm += m
            return codes, bytes(pcm), ws.close_code

    async def non_utf8():
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg())
            await ws.recv()
            await ws.send(b'{"type":"text","text":"\xff\xfe"}', text=True)
            try:
                await ws.recv()
            except ConnectionClosed:
                pass
            return ws.close_code

    async def oversize():
        async with connect(srv.url) as ws:
            await ws.send(cfg_msg())
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": long_text * 4}))  # > max_message_bytes
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass
            return ws.close_code

    async def main():
        healthy = asyncio.create_task(session(srv.url, [TEXT]))
        bad = {k: asyncio.create_task(expect_error(srv.url, msgs[0], msgs[1:])) for k, (msgs, _, _) in cases.items()}
        nf, u8, big = await asyncio.gather(non_fatal(), non_utf8(), oversize())
        return await healthy, {k: await t for k, t in bad.items()}, nf, u8, big

    healthy, bad, (nf_codes, nf_pcm, nf_close), u8, big = asyncio.run(main())
    for name, (_, code, close) in cases.items():
        err, got_close = bad[name]
        assert err is not None and err["code"] == code and err["fatal"] is True, (name, err)
        assert got_close == close, (name, got_close)
    assert nf_codes == ["unknown_type", "invalid_field", "empty_text", "invalid_message"]
    assert nf_pcm == offline_pcm(engine) and nf_close == 1000
    assert u8 == 1007  # websockets closes before the server sees the message (no error frame)
    assert big == 1009
    assert bytes(healthy.audio) == offline_pcm(engine)  # the healthy neighbour never noticed
    wait_idle(srv, engine)


def test_handshake_auth_and_origin(srv):
    async def go():
        r = await session(srv.url, ["Hi."])  # key in config
        ok = await stream_tts(srv.url, ["Hi."], headers={"Authorization": f"Bearer {KEY}"}, **SAMPLING)
        with pytest.raises(InvalidStatus) as e401:
            async with connect(srv.url, additional_headers={"x-api-key": "wrong"}):
                pass
        with pytest.raises(SpeechMTPError, match="HTTP 401"):  # the client turns it into a clear error
            await stream_tts(srv.url, ["Hi."], headers={"x-api-key": "wrong"})
        with pytest.raises(InvalidStatus) as e403:
            async with connect(srv.url, origin="http://evil.example"):
                pass
        same = f"http://127.0.0.1:{srv.server.port}"
        async with connect(srv.url, origin=same) as ws:  # the demo page's own origin
            await ws.send(cfg_msg())
            same_ok = json.loads(await ws.recv())["type"]
        return r, ok, e401.value.response.status_code, e403.value.response.status_code, same_ok

    r, ok, s401, s403, same_ok = asyncio.run(go())
    assert r.done and ok.done and (s401, s403, same_ok) == (401, 403, "ready")


# -- concurrency, vanishing clients, limits, shutdown ----------------------------------------------------
def wait_idle(srv, engine, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if engine.active_slots == 0 and engine.open_sessions == 0 and not srv.server._tasks and srv.server.active == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"not idle: slots={engine.active_slots} sessions={engine.open_sessions} "
                         f"handlers={len(srv.server._tasks)} active={srv.server.active}")


def test_concurrent_clients_and_vanishing_client(srv, engine):
    wait_idle(srv, engine)
    base_tasks = srv.tasks()

    async def main():
        texts = [f"Client {i} is speaking now. It ends here." for i in range(6)]
        results = await asyncio.gather(*[session(srv.url, [t], seed=i) for i, t in enumerate(texts)])
        return results

    results = asyncio.run(main())
    assert all(r.done and not r.done["cancelled"] and len(r.audio) > 0 for r in results)

    async def vanish():
        ws = await connect(srv.url)
        await ws.send(cfg_msg(chunk_frames=2))
        await ws.recv()
        await ws.send(json.dumps({"type": "text", "text": "A long story begins. " * 20}))
        while not isinstance(await ws.recv(), bytes):
            pass
        ws.transport.abort()  # gone without a close frame, mid-stream

    asyncio.run(vanish())
    wait_idle(srv, engine)
    deadline = time.time() + 10  # websockets' own per-connection tasks end a moment after the handler
    while srv.tasks() > base_tasks and time.time() < deadline:
        time.sleep(0.05)
    assert srv.tasks() == base_tasks  # no handler, receive or send task left behind
    health = json.loads(urllib.request.urlopen(srv.http + "/healthz", timeout=5).read())
    assert health["ok"] is True and health["sessions"] == 0 and health["slots"] == 0


def test_http_endpoints(srv):
    page = urllib.request.urlopen(srv.http + "/", timeout=5)
    assert page.headers["Content-Type"].startswith("text/html") and b"AudioContext" in page.read()
    metrics = urllib.request.urlopen(srv.http + "/metrics", timeout=5).read().decode()
    for name in ("speechmtp_sessions_active", "speechmtp_sessions_queued", "speechmtp_sessions_total",
                 "speechmtp_ttfa_seconds_bucket", "speechmtp_rtf_sum", "speechmtp_errors_total"):
        assert name in metrics
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(srv.http + "/nope", timeout=5)
    assert e.value.code == 404


def test_too_many_sessions_then_graceful_shutdown(engine):
    s = ServerThread({"default": engine}, ServerConfig(max_sessions=1, limits=Limits(idle_timeout_s=10)))
    try:
        async def go():
            async with connect(s.url) as first:
                await first.send(json.dumps({"type": "config"}))
                assert json.loads(await first.recv())["type"] == "ready"
                err, code = await expect_error(s.url, json.dumps({"type": "config"}))
                assert (err["code"], code) == ("server_busy", 1013)
                await first.send(json.dumps({"type": "text", "text": "Still streaming. " * 10}))
                # SIGTERM path: server.stop() closes every session with 1001
                stop = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(s.server.stop(), s.loop))
                try:
                    async for _ in first:
                        pass
                except ConnectionClosed:
                    pass
                await stop
                return first.close_code

        assert asyncio.run(go()) == 1001
        wait_idle(s, engine)
    finally:
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(10)


def test_serve_bench_reports_and_counts_underruns(engine):
    from speechmtp.bench.serve import run_serve_bench, underruns

    # playback from t=1.0 (no jitter buffer) at 10 samples/s: chunk 3 is due at 3.0 but arrives at 3.5;
    # playback then waits, so chunk 4 is due at 4.5 and its arrival at 4.2 is in time
    assert underruns([(1.0, 10), (1.5, 10), (3.5, 10), (4.2, 10)], 10, 0.0) == (1, 0.5)
    assert underruns([(1.0, 10), (1.9, 10)], 10, 0.0) == (0, 0.0)
    r = run_serve_bench(clients=2, seconds=0.5, text="Short load test.", engine=engine)
    assert r["sessions"] >= 2 and not r["errors"]
    assert r["ttfa_ms"]["p50"] > 0 and r["rtf_per_stream"]["p95"] > 0 and "late_chunks" in r["underruns"]
    assert engine.active_slots == 0


def test_queue_waits_for_a_free_place(engine):
    s = ServerThread({"default": engine}, ServerConfig(max_sessions=1, queue_size=1, queue_timeout_s=20))
    try:
        async def go():
            first = asyncio.create_task(stream_tts(s.url, ["First in line. " * 3], **SAMPLING))
            await asyncio.sleep(0.3)  # let the first take the only place
            second = await stream_tts(s.url, ["Second, after waiting."], **SAMPLING)
            return await first, second

        first, second = asyncio.run(go())
        assert first.done and second.done and not second.done["cancelled"]
    finally:
        s.stop()


def test_cli_client_and_stdin_lines(srv, engine, tmp_path, monkeypatch):
    import io

    import soundfile as sf

    from speechmtp import client

    monkeypatch.setenv("SPEECHMTP_API_KEY", KEY)  # sent as an Authorization header
    out = tmp_path / "a.wav"
    assert client.main([TEXT, "-o", str(out), "--url", srv.url, "--seed", "5", "--temperature", "0.9"]) == 0
    wav, sr = sf.read(out, dtype="int16")
    assert sr == 16000 and wav.tobytes() == offline_pcm(engine)
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there. How are you\n today? Fine, thanks.\n"))
    raw = tmp_path / "b.ulaw"
    assert client.main(["-", "-o", str(raw), "--url", srv.url, "--format", "mulaw"]) == 0
    assert raw.stat().st_size > 0


def test_serve_command_exits_cleanly_on_sigterm(engine, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys

    ck = build_tiny_checkpoint(tmp_path / "voice")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECHMTP_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "speechmtp.cli", "serve", "--port", "0", "--checkpoint", str(ck),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/ws", line).group(1))

        async def go():
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send(json.dumps({"type": "config", "chunk_frames": 1}))
                await ws.recv()
                await ws.send(json.dumps({"type": "text", "text": "Long enough to still be talking. " * 5}))
                while not isinstance(await ws.recv(), bytes):
                    pass
                proc.send_signal(signal.SIGTERM)
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass
                return ws.close_code

        assert asyncio.run(go()) == 1001
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
