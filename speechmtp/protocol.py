"""The WebSocket protocol as plain code: message parsing, validation and the session state machine.

No I/O here: the server feeds raw messages to `SessionProtocol.receive` and executes the commands
it returns; every error is a `ProtocolError` carrying its wire code, whether it is fatal, and the
close code. docs/protocol.md is the user-facing description of the same rules.
"""
from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field

from .audio_format import FORMATS, MULAW_RATE, SAMPLE_RATES

MODES = ("ntp", "mtp", "mtp-relaxed")

# close codes (RFC 6455 + IANA registry)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

# code -> (fatal, close code). Fatal errors are sent, then the connection closes with that code.
ERRORS: dict[str, tuple[bool, int | None]] = {
    "invalid_json": (True, CLOSE_INVALID_DATA),
    "binary_not_supported": (True, CLOSE_UNSUPPORTED_DATA),
    "not_configured": (True, CLOSE_POLICY),  # first message was not a config
    "invalid_config": (True, CLOSE_POLICY),
    "unknown_voice": (True, CLOSE_POLICY),
    "unauthorized": (True, CLOSE_POLICY),
    "text_limit": (True, CLOSE_POLICY),
    "idle_timeout": (True, CLOSE_POLICY),
    "slow_consumer": (True, CLOSE_POLICY),
    "server_busy": (True, CLOSE_TRY_AGAIN),
    "internal_error": (True, CLOSE_INTERNAL),
    # not fatal: the session keeps streaming
    "invalid_message": (False, None),  # a JSON value that is not an object with a string "type"
    "unknown_type": (False, None),
    "invalid_field": (False, None),
    "empty_text": (False, None),
    "already_configured": (False, None),
    "session_ended": (False, None),  # text/flush after "end"
    "unspeakable_text": (False, None),  # a sentence with nothing the voice can read was skipped
    "sentence_failed": (False, None),  # the voice could not synthesise one sentence (message says why); skipped
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        if code not in ERRORS:
            raise ValueError(f"undocumented error code {code!r}")
        self.code, self.message = code, message

    @property
    def fatal(self) -> bool:
        return ERRORS[self.code][0]

    @property
    def close_code(self) -> int | None:
        return ERRORS[self.code][1]

    def to_message(self) -> dict:
        return error_message(self.code, self.message)


def error_message(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message, "fatal": ERRORS[code][0]}


@dataclass
class Limits:
    max_text_chars: int = 20_000  # per session, all text messages together
    max_message_bytes: int = 64 * 1024  # websockets closes larger messages with 1009
    idle_timeout_s: float = 30.0  # no client message while nothing is being synthesised
    send_timeout_s: float = 10.0  # a client that does not drain audio this long is dropped

    def public(self) -> dict:
        return {"max_text_chars": self.max_text_chars, "max_message_bytes": self.max_message_bytes,
                "idle_timeout_s": self.idle_timeout_s}


@dataclass
class SessionConfig:
    voice: str
    mode: str | None = None  # None: the voice's default (its voice.json, else mtp)
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    format: str = "pcm16"
    sample_rate: int = 24000
    audio_events: bool = False
    first_chunk_frames: int | None = None
    chunk_frames: int | None = None


# commands the server executes
@dataclass
class Configure:
    config: SessionConfig


@dataclass
class Text:
    text: str
    flush: bool = False


@dataclass
class Flush:
    pass


@dataclass
class End:
    pass


@dataclass
class Cancel:
    pass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_message(data: str | bytes) -> dict:
    """A raw WebSocket message -> a dict with a string "type"; raises ProtocolError."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("binary_not_supported",
                            "binary messages are not accepted; send JSON text messages such as {\"type\":\"text\",\"text\":\"...\"}")
    try:
        msg = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("invalid_json", f"message is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("invalid_message", f"a message must be a JSON object, got {type(msg).__name__}")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("invalid_message", 'a message must have a string "type", e.g. {"type":"text","text":"Hi."}')
    return msg


CONFIG_FIELDS = ("type", "voice", "checkpoint", "mode", "temperature", "top_k", "top_p", "seed", "format",
                 "sample_rate", "audio_events", "api_key", "first_chunk_frames", "chunk_frames")


def parse_config(msg: dict, voices: dict[str, int], default_voice: str) -> SessionConfig:
    """Validate a config message. `voices` maps each loaded voice to its native sample rate."""
    def bad(why: str):
        raise ProtocolError("invalid_config", why)

    unknown = sorted(set(msg) - set(CONFIG_FIELDS))
    if unknown:
        bad(f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(CONFIG_FIELDS[1:])}")
    voice = msg.get("voice", msg.get("checkpoint")) or default_voice
    if not isinstance(voice, str):
        bad('"voice" must be a string')
    if voice not in voices:
        raise ProtocolError("unknown_voice", f"voice {voice!r} is not loaded here; available: {', '.join(voices)}")
    mode = msg.get("mode")
    if mode is not None and mode not in MODES:
        bad(f'"mode" must be one of {", ".join(MODES)}; got {mode!r}')
    t = msg.get("temperature")
    if t is not None and (not _is_num(t) or not 0 <= t <= 10):
        bad(f'"temperature" must be a number in [0, 10] (0 = greedy); got {t!r}')
    k = msg.get("top_k")
    if k is not None and (not _is_int(k) or k < 0):
        bad(f'"top_k" must be a non-negative integer (0 = off); got {k!r}')
    p = msg.get("top_p")
    if p is not None and (not _is_num(p) or not 0 < p <= 1):
        bad(f'"top_p" must be a number in (0, 1]; got {p!r}')
    seed = msg.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**31):
        bad(f'"seed" must be an integer in [0, 2^31); got {seed!r}')
    fmt = msg.get("format", "pcm16")
    if fmt not in FORMATS:
        bad(f'"format" must be one of {", ".join(FORMATS)}; got {fmt!r}')
    rate = msg.get("sample_rate")
    if rate is not None and (not _is_int(rate) or rate not in SAMPLE_RATES):
        bad(f'"sample_rate" must be one of {", ".join(map(str, SAMPLE_RATES))}; got {rate!r}')
    if fmt == "mulaw":
        if rate not in (None, MULAW_RATE):
            bad(f"mulaw audio is always {MULAW_RATE} Hz; drop sample_rate or set it to {MULAW_RATE}")
        rate = MULAW_RATE
    elif rate is None:
        rate = voices[voice]
    ev = msg.get("audio_events", False)
    if not isinstance(ev, bool):
        bad(f'"audio_events" must be true or false; got {ev!r}')
    key = msg.get("api_key")
    if key is not None and not isinstance(key, str):
        bad('"api_key" must be a string')
    chunks = {}
    for name in ("first_chunk_frames", "chunk_frames"):
        v = msg.get(name)
        if v is not None and (not _is_int(v) or not 1 <= v <= 256):
            bad(f'"{name}" must be an integer in [1, 256]; got {v!r}')
        chunks[name] = v
    return SessionConfig(voice=voice, mode=mode, temperature=t, top_k=k, top_p=p, seed=seed, format=fmt,
                         sample_rate=int(rate), audio_events=ev, **chunks)


@dataclass
class SessionProtocol:
    """The per-connection state machine: awaiting_config -> streaming -> ending -> closed.

    `receive(raw)` returns a command (or None) and raises ProtocolError; fatal errors move the
    state to closed. `authorized` is True when the handshake already carried a valid key."""

    limits: Limits
    voices: dict[str, int]
    default_voice: str
    api_key: str | None = None
    authorized: bool = False
    state: str = "awaiting_config"
    text_chars: int = 0
    config: SessionConfig | None = field(default=None)

    def receive(self, data: str | bytes):
        try:
            return self._receive(data)
        except ProtocolError as e:
            if not e.fatal and self.state == "awaiting_config":  # nothing to keep open yet
                e = ProtocolError("not_configured", f'the first message must be {{"type":"config", ...}}: {e.message}')
                self.state = "closed"
                raise e from None
            if e.fatal:
                self.state = "closed"
            raise

    def _receive(self, data: str | bytes):
        if self.state == "closed":
            raise ProtocolError("session_ended", "the session is closed")
        msg = parse_message(data)
        kind = msg["type"]
        if self.state == "awaiting_config":
            if kind != "config":
                raise ProtocolError("not_configured",
                                    f'the first message must be {{"type":"config", ...}}; got type {kind!r}')
            self._check_key(msg.get("api_key"))
            self.config = parse_config(msg, self.voices, self.default_voice)
            self.state = "streaming"
            return Configure(self.config)
        if kind == "config":
            raise ProtocolError("already_configured", "the session is already configured; open a new connection for other settings")
        if kind == "cancel":
            self.state = "ending"
            return Cancel()
        if kind not in ("text", "flush", "end"):
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; use text, flush, end or cancel")
        if self.state == "ending":
            raise ProtocolError("session_ended", f'"{kind}" after "end" is ignored; open a new connection for more text')
        if kind == "flush":
            return Flush()
        if kind == "end":
            self.state = "ending"
            return End()
        text = msg.get("text")
        if not isinstance(text, str):
            raise ProtocolError("invalid_field", f'"text" must be a string; got {type(text).__name__}')
        flush = msg.get("flush", False)
        if not isinstance(flush, bool):
            raise ProtocolError("invalid_field", '"flush" must be true or false')
        if not text.strip():
            raise ProtocolError("empty_text", 'text is empty; to finish send {"type":"end"}, to speak the buffer now {"type":"flush"}')
        self.text_chars += len(text)
        if self.text_chars > self.limits.max_text_chars:
            raise ProtocolError("text_limit", f"this session has sent {self.text_chars} characters; the limit is "
                                              f"{self.limits.max_text_chars} per session; open a new session")
        return Text(text, flush)

    def _check_key(self, given) -> None:
        if self.api_key is None or self.authorized:
            return
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ProtocolError("unauthorized", "missing or wrong API key: put it in the config message as "
                                                '"api_key" or send an "Authorization: Bearer KEY" header')
        self.authorized = True

    def finished(self) -> None:
        self.state = "closed"


def check_header_key(headers, api_key: str | None) -> bool | None:
    """True/False for a valid/invalid key in the handshake headers; None when none was sent."""
    if api_key is None:
        return None
    given = headers.get("x-api-key")
    auth = headers.get("authorization")
    if given is None and auth is not None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None:
        return None
    return hmac.compare_digest(given.encode(), api_key.encode())
