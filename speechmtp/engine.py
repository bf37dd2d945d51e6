"""The streaming synthesis engine shared by the server, the CLI and the demos.

Text -> sentences -> codec frames (MTP decoding) -> one stateful codec stream decoder per session
-> float PCM chunks. One scheduler thread steps a single BatchDecoder holding every active
session's current sentence, so many sessions share one model; sessions join and leave between
steps. Consumers read a session's events from any thread (`events()`) or an asyncio loop
(`aevents()`), so the event loop never runs the model.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np
import torch

from . import text as textmod
from .utils import SpeechMTPError, pick_device

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("ntp", "mtp", "mtp-relaxed")


@dataclass
class SynthesisOptions:
    """Per-session settings. None leaves the GenerationConfig default in place."""

    mode: str = "mtp"
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a random seed, reported in the timings
    max_frames: int | None = None  # per sentence; None: a cap from the sentence length (below)
    # A voice that misses its end token must not babble for the model's whole context: by default a
    # sentence gets at most 1 s + 0.25 s per character (~4x a normal speaking rate).
    max_seconds_per_char: float = 0.25
    first_chunk_frames: int = 2  # a small first chunk gets the first audio out early
    chunk_frames: int = 12
    max_sentence_chars: int = 300  # run-on text is cut at a space so latency stays bounded

    def __post_init__(self):
        if self.mode not in MODES:
            raise SpeechMTPError(f"decode mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise SpeechMTPError("first_chunk_frames and chunk_frames must be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise SpeechMTPError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise SpeechMTPError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SpeechMTPError(f"top_p must be in (0, 1], got {self.top_p}")


class SentenceBuffer:
    """Incremental text -> complete sentences. A sentence is complete once sentence-final
    punctuation is followed by whitespace; `flush()` returns the rest. Offline synthesis uses
    this same class, so streamed and offline text split identically."""

    def __init__(self, max_chars: int = 300):
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out = []
        while True:
            # text.sentence_ends knows titles, initials and numbers ("Dr. Lee", "3.5"), and never
            # reports a boundary that later text could undo, so streamed and offline splits agree.
            end = next(iter(textmod.sentence_ends(self._buf)), None)
            if end is not None and end[0] < self.max_chars:
                cut = end[1]
            elif len(self._buf) > self.max_chars:
                # no boundary in reach: cut at the last space before the limit (or hard-cut a
                # space-less run) so one sentence never outgrows the model's context
                space = self._buf.rfind(" ", 0, self.max_chars)
                cut = space + 1 if space > 0 else self.max_chars
            else:
                break
            piece, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if piece:
                out.append(piece)
        return out

    def flush(self) -> list[str]:
        rest = self.feed(" ") if self._buf.strip() else []
        piece, self._buf = self._buf.strip(), ""
        return rest + ([piece] if piece else [])

    @property
    def pending(self) -> str:
        return self._buf


@dataclass
class Event:
    """What a session emits: "audio" (float32 at the codec rate), "flushed", "error" (not fatal:
    a sentence was skipped), "done" (data = timings; the last event)."""

    kind: str
    audio: np.ndarray | None = None
    data: dict = field(default_factory=dict)


class Session:
    """One stream of speech. Feed text (`push_text`, `flush`, `end`), read `events()`/`aevents()`.
    Thread-safe for one producer; all model and codec work happens on the engine's thread."""

    def __init__(self, engine: "Engine", opts: SynthesisOptions, loop: asyncio.AbstractEventLoop | None):
        self.engine, self.opts = engine, opts
        self.id = secrets.token_hex(8)
        self.seed = opts.seed if opts.seed is not None else secrets.randbits(31)
        self._loop = loop
        self._out: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._text = SentenceBuffer(opts.max_sentence_chars)
        self._requests: collections.deque = collections.deque()  # ("sentence", str) | ("flush",) | ("end",)
        self.cancelled = False
        self.finished = False
        self.ended = False
        # engine-thread state
        self._stream = engine.codec.stream_decoder()
        self._pending: list[torch.Tensor] = []  # frames waiting to reach the chunk size
        self._n_pending = 0
        self._n_sentences = 0
        self._emitted_audio = False
        self._flush_count = 0
        # timings
        self._t_open = time.perf_counter()
        self._t_first_request: float | None = None
        self._t_first_audio: float | None = None
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._frames = 0
        self._steps = 0
        self._samples = 0
        self._gen_stats: list[dict] = []

    # -- producer side (any thread) ---------------------------------------------------------
    def push_text(self, text: str) -> None:
        """Buffer text; complete sentences start synthesising at once."""
        if self.ended:
            raise SpeechMTPError("this session has ended; open a new one for more text")
        for s in self._text.feed(text):
            self._requests.append(("sentence", s))
        self.engine._wake(self)

    def flush(self) -> None:
        """Synthesise everything buffered and close the utterance: a "flushed" event follows its audio."""
        for s in self._text.flush():
            self._requests.append(("sentence", s))
        self._requests.append(("flush",))
        self.engine._wake(self)

    def end(self) -> None:
        """No more text: finish the remaining audio, then "done"."""
        if self.ended:
            return
        self.ended = True
        for s in self._text.flush():
            self._requests.append(("sentence", s))
        self._requests.append(("end",))
        self.engine._wake(self)

    def cancel(self) -> None:
        """Stop at once: the slot is freed before the next decoding step; "done" (cancelled) follows."""
        self.cancelled = True
        self.ended = True
        self.engine._wake(self)

    # -- consumer side ----------------------------------------------------------------------
    def events(self, timeout: float | None = None) -> Iterator[Event]:
        while True:
            ev = self._out.get(timeout=timeout)
            yield ev
            if ev.kind == "done":
                return

    async def aevents(self) -> AsyncIterator[Event]:
        while True:
            ev = await self._out.get()
            yield ev
            if ev.kind == "done":
                return

    @property
    def busy(self) -> bool:
        """True while synthesis is queued or running (used by idle timeouts)."""
        return self._busy_since is not None or bool(self._requests)

    # -- engine-thread side -----------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        if self._loop is None:
            self._out.put(ev)
            return
        try:
            self._loop.call_soon_threadsafe(self._out.put_nowait, ev)
        except RuntimeError:  # the consumer's loop is gone: nobody will read this stream
            self.cancelled = True

    def _push_frames(self, frames: torch.Tensor | None, force: bool = False) -> None:
        if frames is not None and frames.shape[-1] > 0:
            self._pending.append(frames)
            self._n_pending += frames.shape[-1]
        size = self.opts.chunk_frames if self._emitted_audio else self.opts.first_chunk_frames
        if self._n_pending == 0 or (self._n_pending < size and not force):
            return
        codes = torch.cat(self._pending, dim=-1)[None]  # (1, Q, t)
        self._pending, self._n_pending = [], 0
        self._emit_audio(self._stream.push(codes.to(self.engine.codec.device)))

    def _emit_audio(self, wav: torch.Tensor) -> None:
        pcm = wav.reshape(-1).float().cpu().numpy()
        if pcm.size == 0:
            return
        if self._t_first_audio is None:
            self._t_first_audio = time.perf_counter()
        self._emitted_audio = True
        self._samples += pcm.size
        self._emit(Event("audio", audio=pcm))

    def _close_utterance(self) -> None:
        self._push_frames(None, force=True)
        self._emit_audio(self._stream.flush())
        self._stream.reset()

    def _mark_busy(self, busy: bool) -> None:
        now = time.perf_counter()
        if busy and self._busy_since is None:
            self._busy_since = now
            if self._t_first_request is None:
                self._t_first_request = now
        elif not busy and self._busy_since is not None:
            self._busy_s += now - self._busy_since
            self._busy_since = None

    def timings(self) -> dict:
        sr = self.engine.codec.sample_rate
        audio_s = self._samples / sr
        ttfa = None
        if self._t_first_audio is not None and self._t_first_request is not None:
            ttfa = (self._t_first_audio - self._t_first_request) * 1000.0
        busy = self._busy_s + (time.perf_counter() - self._busy_since if self._busy_since else 0.0)
        passes = sum(getattr(g, "forward_passes", 0) for g in self._gen_stats)
        grid = sum(getattr(g, "steps", 0) for g in self._gen_stats)
        return {
            "ttfa_ms": None if ttfa is None else round(ttfa, 2),
            "rtf": round(busy / audio_s, 4) if audio_s > 0 else None,
            "audio_s": round(audio_s, 4),
            "samples": self._samples,
            "sample_rate": sr,
            "frames": self._frames,
            "steps": self._steps,
            # the decoder's own measure: grid steps emitted per forward pass (1.0 = plain NTP)
            "accepted_per_step": round(grid / passes, 3) if passes else None,
            "frames_per_step": round(self._frames / self._steps, 3) if self._steps else None,
            "forward_passes": passes,
            "sentences": self._n_sentences,
            "synthesis_s": round(busy, 4),
            "seed": self.seed,
            "mode": self.opts.mode,
        }


class Engine:
    """Many sessions, one model: a scheduler thread batches every active sentence into one decoder."""

    def __init__(self, model, codec, device=None, max_batch: int = 8, defaults: SynthesisOptions | None = None):
        self.model, self.codec = model, codec
        self.device = pick_device(str(device) if device is not None else None)
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise SpeechMTPError(f"max_batch must be at least 1, got {max_batch}")
        self.defaults = defaults or SynthesisOptions()
        self._decoder = None
        self._cond = threading.Condition()
        self._sessions: dict[str, Session] = {}  # open sessions
        self._wanting: collections.deque[Session] = collections.deque()  # waiting for a slot or a request
        self._slots: dict[object, Session] = {}
        self._slot_of: dict[str, object] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self.name = "custom"

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def resolve_checkpoint(checkpoint: str | Path) -> Path:
        """A folder path, or a name under the repo's checkpoints/ ("default" is the shipped voice)."""
        p = Path(checkpoint).expanduser()
        candidates = [p] if p.is_absolute() else [p, REPO_ROOT / "checkpoints" / str(checkpoint)]
        for c in candidates:
            if (c / "config.json").is_file():
                return c
        raise SpeechMTPError(
            f"checkpoint {checkpoint!r} not found: looked for config.json in "
            + ", ".join(str(c) for c in candidates)
            + ("; the shipped voice lives in checkpoints/default (build it with `speechmtp recipe default-voice`)"
               if str(checkpoint) == "default" else "; pass a checkpoint folder or a name under checkpoints/"))

    @classmethod
    def load(cls, checkpoint: str | Path = "default", device=None, max_batch: int = 8, **kw) -> "Engine":
        from .codec import load_codec
        from .model import SpeechLM

        path = cls.resolve_checkpoint(checkpoint)
        dev = pick_device(device)
        model = SpeechLM.from_pretrained(path, device=dev)
        cfg = model.cfg
        spec = cfg.codec
        if not Path(spec).is_absolute() and (path / spec / "config.json").is_file():
            spec = str(path / spec)  # a codec shipped inside the checkpoint folder
        codec = load_codec(spec, device=dev)
        if (codec.n_codebooks, codec.codebook_size) != (cfg.n_codebooks, cfg.codebook_size):
            raise SpeechMTPError(
                f"checkpoint {path} expects {cfg.n_codebooks} codebooks of {cfg.codebook_size}, but codec "
                f"{cfg.codec!r} has {codec.n_codebooks} of {codec.codebook_size}; fix config.codec")
        if "defaults" not in kw:
            kw["defaults"] = cls.voice_defaults(path)
        eng = cls(model, codec, dev, max_batch=max_batch, **kw)
        eng.name = Path(checkpoint).name if str(checkpoint) != "default" else "default"
        return eng

    VOICE_FILE = "voice.json"
    VOICE_KEYS = ("mode", "temperature", "top_k", "top_p")

    @classmethod
    def voice_defaults(cls, path: Path) -> SynthesisOptions:
        """The voice's own synthesis defaults from <checkpoint>/voice.json ({"mode", "temperature", "top_k",
        "top_p"}, each optional; other keys are notes), chosen by measuring that voice; else the built-in ones."""
        f = Path(path) / cls.VOICE_FILE
        if not f.is_file():
            return SynthesisOptions()
        try:
            data = json.loads(f.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            opts = SynthesisOptions(**{k: data[k] for k in cls.VOICE_KEYS if data.get(k) is not None})
        except (ValueError, TypeError, SpeechMTPError) as e:
            raise SpeechMTPError(f"{f} is not a valid voice settings file ({e}); fix or delete it") from e
        return opts

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # -- sessions ---------------------------------------------------------------------------
    def options(self, **overrides) -> SynthesisOptions:
        return dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def open_session(self, opts: SynthesisOptions | None = None, loop=None) -> Session:
        """A new stream; pass the running loop to read it with `aevents()`."""
        if self._error is not None:
            raise SpeechMTPError(f"the synthesis engine stopped after an internal error: {self._error!r}")
        opts = opts or self.defaults
        # a long sentence must leave room for its audio in the model's context
        cap = max(16, self.model.cfg.max_seq_len // 4)
        if opts.max_sentence_chars > cap:
            opts = dataclasses.replace(opts, max_sentence_chars=cap)
        sess = Session(self, opts, loop)
        self._gen_config(sess).resolve(self.model)  # bad settings fail here, not on the engine thread
        with self._cond:
            self._sessions[sess.id] = sess
            self._start()
        return sess

    def synthesize(self, text: str, opts: SynthesisOptions | None = None) -> np.ndarray:
        """Offline: the whole waveform (float32 at the codec rate); same samples as streaming it."""
        return np.concatenate([np.zeros(0, np.float32), *self.stream(text, opts)])

    def stream(self, text: str, opts: SynthesisOptions | None = None) -> Iterator[np.ndarray]:
        """Sync iterator of float32 chunks; closing it early cancels the session."""
        _check_text(text)
        sess = self.open_session(opts)
        sess.push_text(text)
        sess.end()
        try:
            for ev in sess.events():
                if ev.kind == "audio":
                    yield ev.audio
        finally:
            if not sess.finished:
                sess.cancel()
        self.last_timings = sess.timings()

    async def astream(self, text: str, opts: SynthesisOptions | None = None) -> AsyncIterator[np.ndarray]:
        """Async iterator of float32 chunks; the model runs on the engine thread, never on the loop."""
        _check_text(text)
        sess = self.open_session(opts, loop=asyncio.get_running_loop())
        sess.push_text(text)
        sess.end()
        try:
            async for ev in sess.aevents():
                if ev.kind == "audio":
                    yield ev.audio
        finally:
            if not sess.finished:
                sess.cancel()
        self.last_timings = sess.timings()

    @property
    def active_slots(self) -> int:
        return len(self._slots)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def close(self) -> None:
        """Cancel every session and stop the scheduler thread."""
        with self._cond:
            for s in list(self._sessions.values()):
                s.cancelled = True
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- scheduler ----------------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="speechmtp-engine", daemon=True)
            self._thread.start()

    def _wake(self, sess: Session) -> None:
        with self._cond:
            if sess.id in self._sessions and sess not in self._wanting and sess.id not in self._slot_of:
                self._wanting.append(sess)
            self._cond.notify_all()

    def _make_decoder(self):
        from .generate import BatchDecoder

        return BatchDecoder(self.model, self.max_batch)

    def _gen_config(self, sess: Session):
        from .generate import GenerationConfig

        o = sess.opts
        known = {f.name for f in dataclasses.fields(GenerationConfig)}
        kw = {"mode": o.mode, "temperature": o.temperature, "top_k": o.top_k, "top_p": o.top_p,
              "max_frames": o.max_frames, "seed": sess.seed + sess._n_sentences}
        return GenerationConfig(**{k: v for k, v in kw.items() if v is not None and k in known})

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                self._decoder = self._make_decoder()
                while self._loop_once():
                    pass
        except BaseException as e:  # a bug must not leave sessions waiting forever
            self._error = e
            with self._cond:
                sessions = list(self._sessions.values())
                self._sessions.clear()
                self._slots.clear()
                self._slot_of.clear()
            for s in sessions:
                s._emit(Event("error", data={"code": "internal_error", "message": f"synthesis failed: {e!r}"}))
                s.finished = True
                s._emit(Event("done", data={**s.timings(), "cancelled": True}))
            raise

    def _loop_once(self) -> bool:
        with self._cond:
            while not self._stopping and not self._slots and not self._wanting and \
                    not any(s.cancelled for s in self._sessions.values()):
                self._cond.wait()
            if self._stopping:
                cancelled = list(self._sessions.values())
            else:
                cancelled = [s for s in self._sessions.values() if s.cancelled]
            wanting = []
            while self._wanting:
                wanting.append(self._wanting.popleft())
        for s in cancelled:
            self._finish(s, cancelled=True)
        if self._stopping:
            return False
        requeue = []
        for s in wanting:
            if s.finished or s.id in self._slot_of:
                continue
            if not self._advance(s):
                requeue.append(s)
        if requeue:
            with self._cond:
                self._wanting.extendleft(reversed(requeue))
        if not self._slots:
            return True
        out = self._decoder.step()
        for slot, sess in list(self._slots.items()):
            frames = out.get(slot)
            sess._steps += 1
            if frames is not None and frames.shape[-1] > 0:
                sess._frames += int(frames.shape[-1])
                sess._push_frames(frames)
            if self._decoder.done(slot):
                self._release(slot)
                sess._push_frames(None, force=True)  # the sentence's last frames go out now
                self._wake(sess)
        return True

    def _advance(self, s: Session) -> bool:
        """Run a session's queued requests up to its next sentence. False: no free slot yet."""
        while s._requests:
            kind = s._requests[0][0]
            s._mark_busy(True)
            if kind == "sentence":
                if len(self._slots) >= self.max_batch:
                    return False
                sentence = s._requests.popleft()[1]
                try:
                    ids = textmod.encode(sentence)
                except SpeechMTPError as e:  # e.g. only emoji: skip it, tell the client, go on
                    s._emit(Event("error", data={"code": "unspeakable_text", "message": str(e)}))
                    continue
                cfg = self._gen_config(s)
                if s.opts.max_frames is None:
                    cap = int(self.codec.frame_rate * (1.0 + s.opts.max_seconds_per_char * len(ids)))
                    cfg = dataclasses.replace(cfg, max_frames=min(cfg.max_frames, cap))
                s._n_sentences += 1
                try:
                    slot = self._decoder.add(ids, cfg)
                except SpeechMTPError as e:  # e.g. too long for the model's context: this sentence only
                    s._emit(Event("error", data={"code": "sentence_failed", "message": str(e)}))
                    continue
                with self._cond:
                    self._slots[slot] = s
                    self._slot_of[s.id] = slot
                return True
            s._requests.popleft()
            if kind == "flush":
                s._close_utterance()
                s._flush_count += 1
                s._emit(Event("flushed", data={"flush_id": s._flush_count}))
            elif kind == "end":
                s._close_utterance()
                self._finish(s, cancelled=False)
                return True
        s._mark_busy(False)
        return True

    def _release(self, slot) -> None:
        with self._cond:
            sess = self._slots.pop(slot, None)
            if sess is not None:
                self._slot_of.pop(sess.id, None)
        stats = self._decoder.stats(slot) if hasattr(self._decoder, "stats") else None
        if sess is not None and stats:
            sess._gen_stats.append(stats)
        self._decoder.remove(slot)

    def _finish(self, s: Session, cancelled: bool) -> None:
        slot = self._slot_of.get(s.id)
        if slot is not None:
            self._release(slot)
        with self._cond:
            self._sessions.pop(s.id, None)
            try:
                self._wanting.remove(s)
            except ValueError:
                pass
        if s.finished:
            return
        s._requests.clear()
        s._mark_busy(False)
        s.finished = True
        s._emit(Event("done", data={**s.timings(), "cancelled": cancelled}))


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise SpeechMTPError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise SpeechMTPError("text is empty: give something to say")
    if len(text) > textmod.MAX_TEXT_CHARS:
        raise SpeechMTPError(f"text is {len(text)} characters; the limit is {textmod.MAX_TEXT_CHARS}")


def build_tiny_checkpoint(folder: str | Path, seed: int = 0, max_seq_len: int = 256, mtp_heads: int = 2) -> Path:
    """A random-weight SpeechLM + built-in codec small enough for tests and load benchmarks on a CPU."""
    from .codec.builtin import BuiltinCodec, tiny_config
    from .model import ModelConfig, SpeechLM

    folder = Path(folder)
    torch.manual_seed(seed)
    ccfg = tiny_config(hop_length=320, n_fft=320)
    BuiltinCodec(ccfg).save(folder / "codec")
    SpeechLM(ModelConfig(n_codebooks=ccfg.n_codebooks, codebook_size=ccfg.codebook_size, d_model=32, n_layers=1,
                         n_heads=2, max_seq_len=max_seq_len, mtp_heads=mtp_heads,
                         codec=str((folder / "codec").resolve()))).save_pretrained(folder)
    return folder
