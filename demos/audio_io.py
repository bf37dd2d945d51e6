"""Audio-device plumbing shared by the demos: a jitter-buffered player and a block recorder.

sounddevice (PortAudio) is imported lazily, so the callbacks below can be driven by tests
with plain arrays and no hardware; `open_output`/`open_input` are the only parts that need a device.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np


class AudioUnavailable(RuntimeError):
    """No PortAudio or no usable device: the message says what to install or choose."""


def import_sounddevice():
    try:
        import sounddevice as sd  # noqa: PLC0415 - optional, demos only
    except ImportError as e:
        raise AudioUnavailable(
            "the demos need the 'sounddevice' package: .venv/bin/pip install -e '.[demos]'") from e
    except OSError as e:  # sounddevice imports fine only when libportaudio is present
        raise AudioUnavailable(
            f"PortAudio is not installed ({e}); on Debian/Ubuntu: sudo apt-get install libportaudio2") from e
    return sd


def list_devices() -> str:
    sd = import_sounddevice()
    return str(sd.query_devices())


def check_device(kind: str, device=None) -> None:
    """Fail early with a helpful message when there is no input/output device."""
    sd = import_sounddevice()
    try:
        sd.check_output_settings(device=device) if kind == "output" else sd.check_input_settings(device=device)
    except Exception as e:  # PortAudioError, ValueError: no default device, bad index
        raise AudioUnavailable(
            f"no usable audio {kind} device ({e}). List devices with --list-devices and pick one with --device") from e


class JitterBufferPlayer:
    """Queue of float32 mono chunks played by a device callback.

    Playback starts once `prebuffer` seconds are queued (or the stream is marked finished), so
    small network/compute jitter does not become an audible gap; an empty queue mid-stream
    plays silence and counts an underrun instead of blocking the audio thread.
    """

    def __init__(self, sample_rate: int, prebuffer_s: float = 0.05):
        self.sample_rate = sample_rate
        self.prebuffer = int(prebuffer_s * sample_rate)
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._started = False
        self._finished = False
        self.underruns = 0
        self.samples_played = 0
        self.first_play_time: float | None = None
        self.drained = threading.Event()

    def put(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if chunk.size == 0:
            return
        with self._lock:
            self._chunks.append(chunk)
            self._queued += chunk.size

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            if self._queued == 0:
                self.drained.set()

    def callback(self, outdata: np.ndarray, frames: int, time_info=None, status=None) -> None:
        """sounddevice OutputStream callback: fill `outdata` (frames, 1)."""
        out = outdata.reshape(-1)
        out[:] = 0.0
        with self._lock:
            if not self._started:
                if self._queued < self.prebuffer and not self._finished:
                    return
                self._started = True
            filled = 0
            while filled < frames and self._chunks:
                head = self._chunks[0]
                n = min(frames - filled, head.size)
                out[filled:filled + n] = head[:n]
                filled += n
                if n == head.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[n:]
            self._queued -= filled
            if filled and self.first_play_time is None:
                self.first_play_time = time.perf_counter()
            self.samples_played += filled
            if filled < frames:
                if self._finished:
                    self.drained.set()
                else:
                    self.underruns += 1

    def open_output(self, device=None, blocksize: int = 0):
        sd = import_sounddevice()
        check_device("output", device)
        return sd.OutputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                               device=device, blocksize=blocksize, callback=self.callback)


class BlockRecorder:
    """Input callback that slices microphone audio into fixed blocks (e.g. codec frames)."""

    def __init__(self, sample_rate: int, block: int, max_blocks: int = 256):
        self.sample_rate = sample_rate
        self.block = block
        self._pending = np.zeros(0, dtype=np.float32)
        self.blocks: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=max_blocks)
        self.ready = threading.Event()
        self._lock = threading.Lock()

    def callback(self, indata: np.ndarray, frames: int, time_info=None, status=None) -> None:
        now = time.perf_counter()
        mono = np.asarray(indata, dtype=np.float32)
        mono = mono.mean(axis=1) if mono.ndim == 2 else mono.reshape(-1)
        with self._lock:
            self._pending = np.concatenate([self._pending, mono])
            while self._pending.size >= self.block:
                self.blocks.append((now, self._pending[:self.block].copy()))
                self._pending = self._pending[self.block:]
                self.ready.set()

    def pop_all(self) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            out = list(self.blocks)
            self.blocks.clear()
            self.ready.clear()
        return out

    def open_input(self, device=None):
        sd = import_sounddevice()
        check_device("input", device)
        return sd.InputStream(samplerate=self.sample_rate, channels=1, dtype="float32",
                              device=device, callback=self.callback)
