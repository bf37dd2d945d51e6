"""WebSocket + HTTP server: JSON control messages in, binary PCM16/µ-law audio out (docs/protocol.md).

One port serves the WebSocket protocol and, through `process_request`, GET /healthz, /metrics and
the browser demo page at /. Each connection runs a receive loop and a send loop together; when
one ends the other is cancelled and the engine session is cancelled, so a vanished client never
holds a decoding slot. The model runs on the engine's thread, never on the event loop.
"""
from __future__ import annotations

import argparse
import asyncio
import http
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .audio_format import AudioEncoder
from .engine import Engine
from .protocol import (CLOSE_INTERNAL, Cancel, Configure, End, Flush, Limits, ProtocolError, SessionProtocol, Text,
                       check_header_key, error_message)
from .utils import SpeechMTPError

log = logging.getLogger("speechmtp.server")

TTFA_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0)


@dataclass
class ServerConfig:
    max_sessions: int = 16
    queue_size: int = 0  # sessions allowed to wait for a free place (0: refuse at once with 1013)
    queue_timeout_s: float = 5.0
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()  # besides same-origin pages and non-browser clients; "*" = any


class Metrics:
    """Just enough Prometheus text exposition: counters, gauges, one histogram, one summary."""

    def __init__(self):
        self.sessions_total = 0
        self.errors: dict[str, int] = {}
        self.ttfa_counts = [0] * (len(TTFA_BUCKETS) + 1)
        self.ttfa_sum = 0.0
        self.rtf_sum = 0.0
        self.rtf_count = 0
        self.rtf_last = 0.0
        self.audio_seconds = 0.0

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def observe_ttfa(self, seconds: float) -> None:
        i = next((i for i, b in enumerate(TTFA_BUCKETS) if seconds <= b), len(TTFA_BUCKETS))
        self.ttfa_counts[i] += 1
        self.ttfa_sum += seconds

    def observe_rtf(self, rtf: float) -> None:
        self.rtf_sum += rtf
        self.rtf_count += 1
        self.rtf_last = rtf

    def render(self, active: int, queued: int, slots: int) -> str:
        L = ["# HELP speechmtp_sessions_active Sessions streaming now.", "# TYPE speechmtp_sessions_active gauge",
             f"speechmtp_sessions_active {active}",
             "# HELP speechmtp_sessions_queued Sessions waiting for a free place.", "# TYPE speechmtp_sessions_queued gauge",
             f"speechmtp_sessions_queued {queued}",
             "# HELP speechmtp_decode_slots_active Sentences in the shared decoding batch.",
             "# TYPE speechmtp_decode_slots_active gauge", f"speechmtp_decode_slots_active {slots}",
             "# HELP speechmtp_sessions_total Sessions started.", "# TYPE speechmtp_sessions_total counter",
             f"speechmtp_sessions_total {self.sessions_total}",
             "# HELP speechmtp_errors_total Errors sent to clients, by code.", "# TYPE speechmtp_errors_total counter"]
        L += [f'speechmtp_errors_total{{code="{c}"}} {n}' for c, n in sorted(self.errors.items())]
        L += ["# HELP speechmtp_ttfa_seconds Time from the first text to the first audio sent.",
              "# TYPE speechmtp_ttfa_seconds histogram"]
        cum = 0
        for b, n in zip(TTFA_BUCKETS, self.ttfa_counts):
            cum += n
            L.append(f'speechmtp_ttfa_seconds_bucket{{le="{b}"}} {cum}')
        cum += self.ttfa_counts[-1]
        L += [f'speechmtp_ttfa_seconds_bucket{{le="+Inf"}} {cum}', f"speechmtp_ttfa_seconds_sum {self.ttfa_sum:.6f}",
              f"speechmtp_ttfa_seconds_count {cum}",
              "# HELP speechmtp_rtf Real-time factor per finished session (synthesis time / audio time).",
              "# TYPE speechmtp_rtf summary", f"speechmtp_rtf_sum {self.rtf_sum:.6f}", f"speechmtp_rtf_count {self.rtf_count}",
              "# HELP speechmtp_rtf_last Real-time factor of the last finished session.", "# TYPE speechmtp_rtf_last gauge",
              f"speechmtp_rtf_last {self.rtf_last:.6f}",
              "# HELP speechmtp_audio_seconds_total Audio streamed.", "# TYPE speechmtp_audio_seconds_total counter",
              f"speechmtp_audio_seconds_total {self.audio_seconds:.3f}"]
        return "\n".join(L) + "\n"


def _response(status: int, body: bytes, content_type: str) -> Response:
    st = http.HTTPStatus(status)
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    return Response(st.value, st.phrase, headers, body)


def _json_response(status: int, obj) -> Response:
    return _response(status, json.dumps(obj).encode(), "application/json")


def demo_page() -> bytes:
    return resources.files("speechmtp").joinpath("web/index.html").read_bytes()


class TTSServer:
    """Engines by voice name + limits. `await start(host, port)`, `await stop()`."""

    def __init__(self, engines: dict[str, Engine], config: ServerConfig | None = None):
        if not engines:
            raise SpeechMTPError("the server needs at least one loaded voice")
        self.engines = engines
        self.cfg = config or ServerConfig()
        self.voices = {name: e.sample_rate for name, e in engines.items()}
        self.default_voice = next(iter(engines))
        self.metrics = Metrics()
        self.active = 0
        self.queued = 0
        self._sem: asyncio.Semaphore | None = None
        self._server = None
        self._tasks: set[asyncio.Task] = set()
        self._authorized: set[int] = set()  # ids of connections whose handshake carried a valid key

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 8765):
        self._sem = asyncio.Semaphore(self.cfg.max_sessions)
        self._server = await serve(
            self.handler, host, port, process_request=self.process_request,
            max_size=self.cfg.limits.max_message_bytes, max_queue=16, write_limit=64 * 1024,
            ping_interval=20, ping_timeout=20, close_timeout=5)
        return self._server

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every connection with 1001 (going away) and wait for the handlers."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        log.info("shutting down: closing sessions with 1001")
        await self.stop()

    # -- HTTP ---------------------------------------------------------------------------------
    def process_request(self, conn: ServerConnection, request: Request):
        path = urlsplit(request.path).path
        if request.headers.get("Upgrade", "").lower() != "websocket":
            if path == "/healthz":
                return _json_response(200, {"ok": True, "sessions": self.active, "queued": self.queued,
                                            "voices": list(self.voices), "slots": self._slots()})
            if path == "/metrics":
                return _response(200, self.metrics.render(self.active, self.queued, self._slots()).encode(),
                                 "text/plain; version=0.0.4; charset=utf-8")
            if path in ("/", "/index.html"):
                return _response(200, demo_page(), "text/html; charset=utf-8")
            return _json_response(404, {"error": f"no such page {path}; try /, /healthz, /metrics or a WebSocket"})
        if path not in ("/", "/ws", "/v1/stream"):
            return _json_response(404, {"error": f"WebSocket path {path} not found; connect to /ws"})
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, request.headers.get("Host", "")):
            self.metrics.error("forbidden_origin")
            return _json_response(403, {"error": f"origin {origin} is not allowed (see --allow-origin)"})
        ok = check_header_key(request.headers, self.cfg.api_key)
        if ok is False:
            self.metrics.error("unauthorized")
            return _json_response(401, {"error": "wrong API key in the Authorization / x-api-key header"})
        if ok:
            self._authorized.add(id(conn))
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        allowed = self.cfg.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return urlsplit(origin).netloc == host  # the demo page served from this very server

    def _slots(self) -> int:
        return sum(e.active_slots for e in self.engines.values())

    # -- WebSocket ------------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        proto = SessionProtocol(self.cfg.limits, self.voices, self.default_voice, self.cfg.api_key,
                                authorized=id(ws) in self._authorized)
        self._authorized.discard(id(ws))
        sess = None
        admitted = False
        try:
            cmd = proto.receive(await self._recv(ws, idle=True))
            assert isinstance(cmd, Configure)
            await self._admit()
            admitted = True
            c = cmd.config
            engine = self.engines[c.voice]
            opts = engine.options(mode=c.mode, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, seed=c.seed,
                                  first_chunk_frames=c.first_chunk_frames, chunk_frames=c.chunk_frames)
            try:
                sess = engine.open_session(opts, loop=asyncio.get_running_loop())
            except SpeechMTPError as e:  # settings this voice cannot honour, e.g. mtp without MTP heads
                raise ProtocolError("invalid_config", str(e)) from None
            encoder = AudioEncoder(engine.sample_rate, c.format, c.sample_rate)
            self.metrics.sessions_total += 1
            await ws.send(json.dumps({
                "type": "ready", "session_id": sess.id, "voice": c.voice, "seed": sess.seed, "mode": opts.mode,
                "audio": {"format": c.format, "sample_rate": c.sample_rate, "channels": 1},
                "limits": self.cfg.limits.public()}))
            clock = {"first_text": None}
            recv_task = asyncio.create_task(self._receive_loop(ws, proto, sess, clock))
            send_task = asyncio.create_task(self._send_loop(ws, sess, encoder, c.audio_events, clock))
            try:
                await asyncio.wait({recv_task, send_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (recv_task, send_task):
                    t.cancel()
                await asyncio.gather(recv_task, send_task, return_exceptions=True)
            for t in (recv_task, send_task):  # surface a fatal error from whichever loop ended
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        except ProtocolError as e:
            await self._fail(ws, e)
        except (ConnectionClosed, UnicodeDecodeError):
            pass  # gone, or websockets already closed it (1007 bad UTF-8, 1009 too big)
        except SpeechMTPError as e:
            await self._fail(ws, ProtocolError("internal_error", str(e)))
        except Exception as e:  # noqa: BLE001 - one broken session must not take the server down
            log.exception("session failed")
            await self._fail(ws, ProtocolError("internal_error", f"internal error: {type(e).__name__}"))
        finally:
            if sess is not None and not sess.finished:
                sess.cancel()  # frees the decoding slot before the next step
            if admitted:
                self.active -= 1
                self._sem.release()
            self._tasks.discard(task)

    async def _recv(self, ws: ServerConnection, idle: bool):
        try:
            if not idle:
                return await ws.recv()
            async with asyncio.timeout(self.cfg.limits.idle_timeout_s):
                return await ws.recv()
        except TimeoutError:
            raise ProtocolError("idle_timeout", f"no message for {self.cfg.limits.idle_timeout_s:g} s; closing") from None

    async def _admit(self) -> None:
        if self._sem.locked() and self.queued >= self.cfg.queue_size:
            raise ProtocolError("server_busy", f"all {self.cfg.max_sessions} sessions are busy; try again later")
        self.queued += 1
        try:
            async with asyncio.timeout(self.cfg.queue_timeout_s):
                await self._sem.acquire()
        except TimeoutError:
            raise ProtocolError("server_busy", f"no session place freed within {self.cfg.queue_timeout_s:g} s; "
                                               "try again later") from None
        finally:
            self.queued -= 1
        self.active += 1

    async def _receive_loop(self, ws, proto: SessionProtocol, sess, clock: dict) -> None:
        while True:
            try:
                raw = await self._recv(ws, idle=True)
            except ProtocolError as e:
                if e.code == "idle_timeout" and (sess.busy or proto.state != "streaming"):
                    continue  # audio is still being made for this client: not idle
                raise
            try:
                cmd = proto.receive(raw)
            except ProtocolError as e:
                if e.fatal:
                    raise
                self.metrics.error(e.code)
                await ws.send(json.dumps(e.to_message()))
                continue
            if isinstance(cmd, Text):
                if clock["first_text"] is None:
                    clock["first_text"] = time.perf_counter()
                sess.push_text(cmd.text)
                if cmd.flush:
                    sess.flush()
            elif isinstance(cmd, Flush):
                sess.flush()
            elif isinstance(cmd, End):
                sess.end()
            elif isinstance(cmd, Cancel):
                sess.cancel()

    async def _send(self, ws, data) -> None:
        try:
            async with asyncio.timeout(self.cfg.limits.send_timeout_s):
                await ws.send(data)
        except TimeoutError:
            raise ProtocolError("slow_consumer", f"the client did not read audio for {self.cfg.limits.send_timeout_s:g} s") from None

    async def _send_loop(self, ws, sess, encoder: AudioEncoder, audio_events: bool, clock: dict) -> None:
        seq = offset = 0
        first_sent = None

        async def send_audio(data: bytes):
            nonlocal seq, offset, first_sent
            if not data:
                return
            n = len(data) // (2 if encoder.fmt == "pcm16" else 1)
            if audio_events:
                await self._send(ws, json.dumps({"type": "audio", "seq": seq, "samples": n, "offset": offset}))
            await self._send(ws, data)
            if first_sent is None:
                first_sent = time.perf_counter()
                if clock["first_text"] is not None:
                    self.metrics.observe_ttfa(first_sent - clock["first_text"])
            seq += 1
            offset += n

        async for ev in sess.aevents():
            if ev.kind == "audio":
                await send_audio(encoder.encode(ev.audio))
            elif ev.kind == "flushed":
                await send_audio(encoder.finish())
                await self._send(ws, json.dumps({"type": "flushed", **ev.data}))
            elif ev.kind == "error":
                self.metrics.error(ev.data.get("code", "internal_error"))
                if ev.data.get("code") == "internal_error":
                    raise ProtocolError("internal_error", ev.data.get("message", "synthesis failed"))
                await self._send(ws, json.dumps(error_message(ev.data["code"], ev.data["message"])))
            elif ev.kind == "done":
                cancelled = bool(ev.data.get("cancelled"))
                if not cancelled:
                    await send_audio(encoder.finish())
                timings = {k: v for k, v in ev.data.items() if k != "cancelled"}
                if first_sent is not None and clock["first_text"] is not None:
                    timings["server_ttfa_ms"] = round((first_sent - clock["first_text"]) * 1000, 2)
                if timings.get("rtf") is not None:
                    self.metrics.observe_rtf(timings["rtf"])
                self.metrics.audio_seconds += timings.get("audio_s") or 0.0
                await self._send(ws, json.dumps({
                    "type": "done", "cancelled": cancelled, "timings": timings,
                    "audio": {"samples": offset, "chunks": seq, "sample_rate": encoder.out_rate}}))
                await ws.close(1000, "done")
                return

    async def _fail(self, ws, e: ProtocolError) -> None:
        """Send the error frame, then close with its code; a dead or stuck client is just dropped."""
        self.metrics.error(e.code)
        try:
            async with asyncio.timeout(2.0):
                await ws.send(json.dumps(e.to_message()))
                await ws.close(e.close_code or CLOSE_INTERNAL, e.code)
        except (ConnectionClosed, TimeoutError, OSError):
            transport = getattr(ws, "transport", None)
            if transport is not None:
                transport.abort()


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechmtp serve", description="Serve streaming TTS over WebSocket (+ HTTP health, "
                                "metrics and a browser demo at /). Protocol: docs/protocol.md.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="voice to load (folder or name under checkpoints/); repeat for several; the first is the default")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)")
    p.add_argument("--max-sessions", type=int, default=16, help="concurrent sessions; more get 1013 (try again later)")
    p.add_argument("--queue", type=int, default=0, help="sessions allowed to wait for a place instead of 1013")
    p.add_argument("--queue-timeout", type=float, default=5.0, help="seconds a queued session waits at most")
    p.add_argument("--max-batch", type=int, default=8, help="sentences decoded together in one batch")
    p.add_argument("--max-text-chars", type=int, default=20_000, help="text per session")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024, help="largest client message (bigger: close 1009)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="seconds without client messages while idle")
    p.add_argument("--send-timeout", type=float, default=10.0, help="drop a client that does not read audio this long")
    p.add_argument("--api-key-env", default="SPEECHMTP_API_KEY",
                   help="environment variable holding the API key (unset or empty: no key needed)")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="extra browser Origin allowed to connect ('*' for any); same-origin pages always are")
    p.add_argument("--log-level", default="INFO")
    return p


def make_server(engines: dict[str, Engine], args) -> TTSServer:
    key = os.environ.get(args.api_key_env) or None
    limits = Limits(max_text_chars=args.max_text_chars, max_message_bytes=args.max_message_bytes,
                    idle_timeout_s=args.idle_timeout, send_timeout_s=args.send_timeout)
    return TTSServer(engines, ServerConfig(max_sessions=args.max_sessions, queue_size=args.queue,
                                           queue_timeout_s=args.queue_timeout, limits=limits, api_key=key,
                                           allowed_origins=tuple(args.allow_origin)))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for n, v in (("--max-sessions", args.max_sessions), ("--max-batch", args.max_batch)):
        if v < 1:
            raise SpeechMTPError(f"{n} must be at least 1, got {v}")
    engines = {}
    for ck in args.checkpoint or ["default"]:
        eng = Engine.load(ck, device=args.device, max_batch=args.max_batch)
        engines[eng.name if eng.name not in engines else ck] = eng

    async def run() -> None:
        server = make_server(engines, args)
        await server.start(args.host, args.port)
        key_note = f"API key required (from ${args.api_key_env})" if server.cfg.api_key else "no API key"
        print(f"speechmtp serving {', '.join(engines)} on ws://{args.host}:{server.port}/ws "
              f"(demo http://{args.host}:{server.port}/, {key_note})", flush=True)
        await server.serve_forever()

    try:
        asyncio.run(run())
    finally:
        for e in engines.values():
            e.close()
    return 0
