"""Paired text-audio corpora -> codec tokens, cached on disk, batched for training.

Three layouts are read (detected from the path): LJSpeech (`metadata.csv` + `wavs/`), a JSONL
manifest (`{"audio": path, "text": ...}` per line) and a folder of `name.wav` + `name.txt` pairs.
Bad items are skipped and counted by reason instead of stopping a long encode halfway.

The token cache lives in `<corpus>/.speechmtp_cache/<key>/` (or `--cache-dir/<key>/`) where the key
hashes the codec's identity, settings and weights, so a different codec never reuses old codes.
It holds safetensors shards of int16 codes plus `index.json`; both are written atomically after
each shard, so an interrupted encode resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import text as textmod
from .codec.base import Codec
from .utils import SpeechMTPError, atomic_write_text, load_safetensors, read_audio, save_safetensors

CACHE_DIRNAME = ".speechmtp_cache"
CACHE_VERSION = 1
AUDIO_EXTS = (".wav", ".flac", ".ogg")
PREFERRED_MANIFESTS = ("manifest.jsonl", "train.jsonl")
DEFAULT_MAX_SECONDS = 30.0
DEFAULT_MAX_TEXT_CHARS = 500

# skip reasons (keys of the Counter every reader returns); the summary prints them verbatim
BAD_LINE = "malformed manifest line"
NO_AUDIO = "audio file missing (text without audio)"
NO_TEXT = "text file missing (audio without text)"
EMPTY_TEXT = "empty text"
UNSPEAKABLE = "nothing speakable in text"
LONG_TEXT = "text too long"
UNREADABLE = "unreadable audio"
EMPTY_AUDIO = "empty audio"
LONG_AUDIO = "audio too long"


@dataclass
class Item:
    """One corpus entry before encoding. `id` is unique within the corpus and keys the cache."""
    id: str
    audio: Path
    text: str


@dataclass
class Scan:
    layout: str  # "ljspeech" | "jsonl" | "pairs"
    root: Path  # folder the cache goes under by default
    items: list[Item]
    skipped: Counter = field(default_factory=Counter)


@dataclass
class TokenItem:
    id: str
    text: str
    codes: torch.Tensor  # (Q, T) int16/int32 view into a shard

    @property
    def n_frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass
class Corpus:
    items: list[TokenItem]
    skipped: Counter
    cache_dir: Path
    n_encoded: int  # encoded in this call
    n_cached: int  # found in the cache
    frame_rate: float

    def summary(self) -> str:
        secs = sum(it.n_frames for it in self.items) / self.frame_rate
        lines = [f"{len(self.items)} items ({secs / 3600:.2f} h of audio): {self.n_cached} from the cache, "
                 f"{self.n_encoded} encoded now; cache {self.cache_dir}"]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())} items: "
                         + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()))
        return "\n".join(lines)


# -- readers ---------------------------------------------------------------------------------------
def _check_text(raw: str, max_text_chars: int) -> str | None:
    """The skip reason for a transcript, or None when it is usable."""
    if not raw or not raw.strip():
        return EMPTY_TEXT
    if len(raw) > max_text_chars:
        return LONG_TEXT
    try:
        textmod.encode(raw)
    except SpeechMTPError:
        return UNSPEAKABLE
    return None


def _add(scan: Scan, item: Item, max_text_chars: int) -> None:
    why = _check_text(item.text, max_text_chars)
    if why is None and not item.audio.is_file():
        why = NO_AUDIO
    if why:
        scan.skipped[why] += 1
    else:
        scan.items.append(item)


def _read_ljspeech(root: Path, max_text_chars: int) -> Scan:
    scan = Scan("ljspeech", root, [])
    with open(root / "metadata.csv", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = line.split("|")
            if len(parts) < 2 or not parts[0].strip():
                scan.skipped[BAD_LINE] += 1
                continue
            # column 3 is LJSpeech's normalised text (numbers spelled out); prefer it when present
            text = parts[2] if len(parts) >= 3 and parts[2].strip() else parts[1]
            uid = parts[0].strip()
            _add(scan, Item(uid, root / "wavs" / f"{uid}.wav", text), max_text_chars)
    return scan


def _read_jsonl(manifest: Path, max_text_chars: int) -> Scan:
    root = manifest.parent
    scan = Scan("jsonl", root, [])
    seen: set[str] = set()
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                audio, text = rec["audio"], rec["text"]
                if not isinstance(audio, str) or not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                scan.skipped[BAD_LINE] += 1
                continue
            path = Path(audio) if os.path.isabs(audio) else root / audio
            uid = str(rec.get("id") or audio)
            if uid in seen:  # a repeated id would alias two clips in the cache
                scan.skipped["duplicate id"] += 1
                continue
            seen.add(uid)
            _add(scan, Item(uid, path, text), max_text_chars)
    return scan


def _read_pairs(root: Path, max_text_chars: int) -> Scan:
    scan = Scan("pairs", root, [])
    audio: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if CACHE_DIRNAME in p.parts or not p.is_file():
            continue
        key = p.relative_to(root).with_suffix("").as_posix()
        if p.suffix.lower() in AUDIO_EXTS:
            audio[key] = p
        elif p.suffix.lower() == ".txt":
            texts[key] = p
    for key in sorted(set(audio) | set(texts)):
        if key not in texts:
            scan.skipped[NO_TEXT] += 1
        elif key not in audio:
            scan.skipped[NO_AUDIO] += 1
        else:
            try:
                text = texts[key].read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                text = ""
            _add(scan, Item(key, audio[key], text), max_text_chars)
    return scan


def scan_corpus(path: str | os.PathLike, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> Scan:
    """Detect the layout of `path` and list its usable items (audio is checked later, when encoded)."""
    p = Path(path)
    if not p.exists():
        raise SpeechMTPError(f"data path {p} does not exist; pass an LJSpeech folder, a JSONL manifest or a folder of .wav/.txt pairs")
    if p.is_file():
        if p.suffix.lower() in (".jsonl", ".json"):
            return _read_jsonl(p, max_text_chars)
        if p.name == "metadata.csv":
            return _read_ljspeech(p.parent, max_text_chars)
        raise SpeechMTPError(f"data file {p} is neither a .jsonl manifest nor an LJSpeech metadata.csv")
    if (p / "metadata.csv").is_file():
        return _read_ljspeech(p, max_text_chars)
    manifests = sorted(p.glob("*.jsonl"))
    preferred = [p / n for n in PREFERRED_MANIFESTS if (p / n).is_file()]
    if preferred or len(manifests) == 1:  # `data synth` writes manifest.jsonl beside heldout.jsonl
        return _read_jsonl((preferred or manifests)[0], max_text_chars)
    if len(manifests) > 1:
        raise SpeechMTPError(f"{p} holds several manifests ({', '.join(m.name for m in manifests)}); pass the one to use")
    scan = _read_pairs(p, max_text_chars)
    if not scan.items and not scan.skipped:
        raise SpeechMTPError(f"no corpus found in {p}: expected metadata.csv (LJSpeech), a .jsonl manifest, or name.wav + name.txt pairs")
    return scan


# -- cache ---------------------------------------------------------------------------------------
def _hash_module(module: torch.nn.Module, h) -> None:
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def codec_fingerprint(codec: Codec) -> dict:
    """Everything about a codec that changes its codes: class, public settings and a hash of its weights."""
    ident: dict = {"class": f"{type(codec).__module__}.{type(codec).__qualname__}", "name": codec.name,
                   "sample_rate": codec.sample_rate, "frame_rate": float(codec.frame_rate),
                   "n_codebooks": codec.n_codebooks, "codebook_size": codec.codebook_size}
    h = hashlib.sha256()
    for k, v in sorted(vars(codec).items()):
        if k.startswith("_") or k in ("device", "training"):
            continue
        if isinstance(v, (bool, int, float, str)) or v is None:
            ident.setdefault(k, v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            ident[k] = json.loads(json.dumps(dataclasses.asdict(v), default=str))
    # only what the codes depend on (the built-in codec: encoder and codebooks), so a decoder fine-tune
    # keeps the cache, and the LMs trained on those codes stay valid
    for m in codec.code_modules():
        _hash_module(m, h)
    ident["weights_sha256"] = h.hexdigest()
    return ident


def cache_key(codec: Codec) -> str:
    ident = codec_fingerprint(codec)
    blob = json.dumps({"v": CACHE_VERSION, **ident}, sort_keys=True).encode()
    return f"{codec.name}-{hashlib.sha256(blob).hexdigest()[:16]}".replace("/", "_").replace(":", "_")


def _audio_sig(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class TokenCache:
    """Shards of codes + an index {id: {shard, offset, frames, sig}}; appended one shard at a time."""

    def __init__(self, folder: Path, codec: Codec):
        self.dir = folder
        self.index_path = folder / "index.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpeechMTPError(f"cannot create the token cache {folder} ({e}); pass --cache-dir to a writable folder") from e
        self.entries: dict[str, dict] = {}
        self.shards: list[str] = []
        if self.index_path.is_file():
            try:
                idx = json.loads(self.index_path.read_text())
                self.entries, self.shards = idx["entries"], idx["shards"]
            except (json.JSONDecodeError, KeyError) as e:
                raise SpeechMTPError(f"token cache index {self.index_path} is corrupt ({e}); delete {folder} to re-encode") from e
        else:
            atomic_write_text(folder / "codec.json", json.dumps(codec_fingerprint(codec), indent=2) + "\n")
        self.dtype = torch.int16 if codec.codebook_size <= 32768 else torch.int32
        self._pending: list[tuple[str, str, torch.Tensor]] = []

    def has(self, item: Item) -> bool:
        e = self.entries.get(item.id)
        return e is not None and e["sig"] == _audio_sig(item.audio)

    def add(self, item: Item, codes: torch.Tensor) -> None:
        self._pending.append((item.id, _audio_sig(item.audio), codes.to("cpu", self.dtype)))

    def flush(self) -> None:
        """Write pending codes as one shard, then the index: a crash between the two loses only that shard."""
        if not self._pending:
            return
        name = f"shard-{len(self.shards):05d}.safetensors"
        codes = torch.cat([c for _, _, c in self._pending], dim=1)  # (Q, sum T)
        save_safetensors({"codes": codes}, self.dir / name)
        off = 0
        for uid, sig, c in self._pending:
            self.entries[uid] = {"shard": name, "offset": off, "frames": int(c.shape[1]), "sig": sig}
            off += int(c.shape[1])
        self.shards.append(name)
        atomic_write_text(self.index_path, json.dumps({"version": CACHE_VERSION, "shards": self.shards,
                                                       "entries": self.entries}) + "\n")
        self._pending = []

    def load(self, items: list[Item]) -> list[TokenItem]:
        loaded: dict[str, torch.Tensor] = {}
        out = []
        for it in items:
            e = self.entries[it.id]
            if e["shard"] not in loaded:
                loaded[e["shard"]] = load_safetensors(self.dir / e["shard"])["codes"]
            out.append(TokenItem(it.id, it.text, loaded[e["shard"]][:, e["offset"]:e["offset"] + e["frames"]]))
        return out


def default_cache_root(scan: Scan, cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir else scan.root / CACHE_DIRNAME


def encode_corpus(path: str | os.PathLike, codec: Codec, cache_dir: str | os.PathLike | None = None,
                  max_seconds: float = DEFAULT_MAX_SECONDS, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                  shard_items: int = 256, shard_seconds: float = 60.0, progress: bool = True,
                  verbose: bool = True) -> Corpus:
    """Scan the corpus, encode every item not yet in the cache, and return all usable items' codes."""
    scan = scan_corpus(path, max_text_chars)
    cache = TokenCache(default_cache_root(scan, cache_dir) / cache_key(codec), codec)
    todo = [it for it in scan.items if not cache.has(it)]
    skipped, bad = Counter(scan.skipped), set()
    n_cached = len(scan.items) - len(todo)
    if todo:
        import soundfile as sf
        from tqdm import tqdm

        last = time.monotonic()
        bar = tqdm(todo, desc=f"encoding with {codec.name}", unit="clip", disable=not progress, file=sys.stderr)
        try:
            for it in bar:
                why = None
                try:
                    info = sf.info(str(it.audio))
                    if info.frames == 0:
                        why = EMPTY_AUDIO
                    elif info.frames / info.samplerate > max_seconds:
                        why = LONG_AUDIO
                except Exception:  # soundfile raises several types for broken headers
                    why = UNREADABLE
                if why is None:
                    try:
                        wav, _ = read_audio(it.audio, codec.sample_rate)
                        with torch.inference_mode():
                            codes = codec.encode(wav)[0]  # (Q, T)
                        if codes.shape[-1] == 0:
                            why = EMPTY_AUDIO
                    except SpeechMTPError as e:
                        why = EMPTY_AUDIO if "empty" in str(e) else UNREADABLE
                if why:
                    skipped[why] += 1
                    bad.add(it.id)
                    continue
                cache.add(it, codes)
                if len(cache._pending) >= shard_items or time.monotonic() - last > shard_seconds:
                    cache.flush()
                    last = time.monotonic()
        finally:  # keep what was encoded even on Ctrl-C, so the next run resumes from here
            cache.flush()
            bar.close()
    good = [it for it in scan.items if it.id not in bad]
    corpus = Corpus(cache.load(good), skipped, cache.dir, len(todo) - len(bad), n_cached, float(codec.frame_rate))
    if verbose:
        print(corpus.summary(), file=sys.stderr)
    return corpus


# -- token packs: a corpus's codes in one file, to train where the audio and codec are not ------------
PACK_VERSION = 1


def save_token_pack(corpus: Corpus, codec: Codec, codec_spec: str, path: str | os.PathLike) -> None:
    """All items' codes concatenated + offsets, with ids, texts and the codec's fingerprint as metadata."""
    if not corpus.items:
        raise SpeechMTPError("nothing to pack: the corpus has no usable items")
    codes = torch.cat([it.codes for it in corpus.items], dim=1)
    offsets = torch.tensor([0] + [it.n_frames for it in corpus.items], dtype=torch.int64).cumsum(0)
    meta = {"format": "speechmtp-token-pack", "version": str(PACK_VERSION), "codec_spec": codec_spec,
            "codec": json.dumps(codec_fingerprint(codec)), "frame_rate": repr(float(codec.frame_rate)),
            "ids": json.dumps([it.id for it in corpus.items]), "texts": json.dumps([it.text for it in corpus.items])}
    save_safetensors({"codes": codes, "offsets": offsets}, path, metadata=meta)


def is_token_pack(path: str | os.PathLike) -> bool:
    return str(path).endswith(".safetensors") and Path(path).is_file()


def load_token_pack(path: str | os.PathLike) -> tuple[Corpus, dict]:
    """-> (corpus, {codec_spec, codec fingerprint, n_codebooks, codebook_size}); no codec or audio needed."""
    from safetensors import safe_open

    path = Path(path)
    t = load_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "speechmtp-token-pack" or "codes" not in t or "offsets" not in t:
        raise SpeechMTPError(f"{path} is not a speechmtp token pack (make one with `speechmtp data encode --pack`)")
    if int(meta.get("version", 0)) > PACK_VERSION:
        raise SpeechMTPError(f"{path} is token pack version {meta['version']}; this speechmtp reads up to {PACK_VERSION}")
    ids, texts, off = json.loads(meta["ids"]), json.loads(meta["texts"]), t["offsets"].tolist()
    codes = t["codes"]
    if not (len(ids) == len(texts) == len(off) - 1) or off[-1] != codes.shape[1]:
        raise SpeechMTPError(f"token pack {path} is inconsistent (ids, texts and offsets disagree); re-create it")
    items = [TokenItem(i, x, codes[:, a:b]) for i, x, a, b in zip(ids, texts, off[:-1], off[1:])]
    fp = json.loads(meta["codec"])
    corpus = Corpus(items, Counter(), path, 0, len(items), float(meta["frame_rate"]))
    return corpus, {"codec_spec": meta["codec_spec"], "codec": fp, "n_codebooks": int(fp["n_codebooks"]),
                    "codebook_size": int(fp["codebook_size"])}


# -- training view ---------------------------------------------------------------------------------
def _unit_hash(s: str) -> float:
    return int.from_bytes(hashlib.sha1(s.encode()).digest()[:8], "big") / 2.0**64


def split_train_val(items: list[TokenItem], val_fraction: float) -> tuple[list[TokenItem], list[TokenItem]]:
    """Deterministic split by a hash of the id: an item stays on its side as the corpus grows."""
    if not 0.0 <= val_fraction < 1.0:
        raise SpeechMTPError(f"--val-fraction must lie in [0, 1); got {val_fraction}")
    if val_fraction == 0 or len(items) < 2:
        return list(items), []
    val = [it for it in items if _unit_hash(it.id) < val_fraction]
    if not val:  # tiny corpora: still hold one item out so validation means something
        val = [min(items, key=lambda it: _unit_hash(it.id))]
    ids = {it.id for it in val}
    return [it for it in items if it.id not in ids], val


class TokenDataset(torch.utils.data.Dataset):
    """Items as dict(id, text LongTensor (L,), codes LongTensor (Q, T))."""

    def __init__(self, items: list[TokenItem]):
        self.items = items
        self.text_ids = [torch.tensor(textmod.encode(it.text), dtype=torch.long) for it in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"id": self.items[i].id, "text": self.text_ids[i], "codes": self.items[i].codes.long()}

    def lengths(self) -> list[int]:
        """Sequence cost of each item (text tokens + frames), for bucketing and limits."""
        return [len(t) + it.n_frames for t, it in zip(self.text_ids, self.items)]


def collate(items: list[dict]) -> dict:
    """The training batch (docs/architecture.md): text (B, L) right-padded with PAD, text_len, codes (B, Q, T) right-padded, code_len."""
    b = len(items)
    L = max(len(x["text"]) for x in items)
    q, T = items[0]["codes"].shape[0], max(x["codes"].shape[1] for x in items)
    text = torch.full((b, L), textmod.PAD, dtype=torch.long)
    codes = torch.zeros((b, q, T), dtype=torch.long)  # pad value is masked by code_len
    for i, x in enumerate(items):
        text[i, :len(x["text"])] = x["text"]
        codes[i, :, :x["codes"].shape[1]] = x["codes"]
    return {"text": text, "text_len": torch.tensor([len(x["text"]) for x in items]),
            "codes": codes, "code_len": torch.tensor([x["codes"].shape[1] for x in items])}


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: int = 32) -> list[list[int]]:
    """Global batches for one epoch: a pure function of (seed, epoch), so resume and every rank agree.

    Shuffle, sort windows of `bucket` batches by length (less padding), cut into full batches (the
    remainder waits for the next epoch's shuffle), shuffle the batch order, and sort inside each
    batch so the micro-batches a rank takes are similar in length too.
    """
    n = len(lengths)
    if batch_size > n:
        raise SpeechMTPError(f"--batch-size {batch_size} is larger than the training set ({n} items); lower it")
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    window = batch_size * max(1, bucket)
    order = []
    for s in range(0, n, window):
        order += sorted(perm[s:s + window], key=lambda i: lengths[i])
    batches = [order[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size)]
    return [sorted(batches[j], key=lambda i: lengths[i]) for j in torch.randperm(len(batches), generator=g).tolist()]


# -- CLI -------------------------------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="LJSpeech folder, JSONL manifest, or folder of name.wav + name.txt pairs")
    p.add_argument("--codec", default="default", help="codec spec: 'encodec', 'encodec:6', or a built-in codec folder/name")
    p.add_argument("--encodec-weights", default=None, help="local EnCodec weights file (encodec_24khz-d7cc33bc.th)")
    p.add_argument("--cache-dir", default=None, help=f"token cache root (default: <data>/{CACHE_DIRNAME})")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="skip clips longer than this")
    p.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS, help="skip transcripts longer than this")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechmtp data encode", description="Encode a corpus into the token cache (resumable).")
    add_data_args(p)
    p.add_argument("--device", default=None, help="device for the codec (default: cuda if present)")
    p.add_argument("--pack", default=None, help="also write every usable item's codes to this .safetensors token pack, "
                   "which `speechmtp train --data` reads with no audio or codec (e.g. to train on another machine)")
    args = p.parse_args(argv)
    if args.pack and not args.pack.endswith(".safetensors"):
        raise SpeechMTPError(f"--pack must name a .safetensors file, got {args.pack!r}")
    from .codec import load_codec
    from .utils import pick_device

    codec = load_codec(args.codec, device=pick_device(args.device), encodec_weights=args.encodec_weights)
    corpus = encode_corpus(args.data, codec, args.cache_dir, args.max_seconds, args.max_text_chars)
    if args.pack:
        save_token_pack(corpus, codec, args.codec, args.pack)
        print(f"token pack: {len(corpus.items)} items -> {args.pack}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
