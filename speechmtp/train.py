"""Training: a speech LM with MTP heads (or new MTP heads on a frozen base) from paired text-audio data.

One code path for one process or many (torchrun): every rank builds the same global batches from
(seed, epoch); a global batch is cut into a fixed list of micro-batches (independent of the number
of ranks) and rank r takes micro-batches r, r+W, ... Each micro-batch's loss is weighted by its
share of the global batch's audio frames and DDP averages gradients over ranks, so the step's
gradient is the frame-weighted mean over the whole global batch whatever the world size: with the
same --micro-batch-size, 1 process and N processes follow the same loss curve.

Resume is exact: train_state.pt holds the weights, AdamW state, the data position (epoch, batch
index; batches are a pure function of them) and every rank's RNG state, all as tensors and
primitives so it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from . import data as datamod
from .model import ModelConfig, SpeechLM
from .text import encode as text_encode
from .utils import SpeechMTPError, atomic_torch_save, atomic_write_text, pick_device

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    codec: str | None = None  # None: the --from/--resume checkpoint's codec, else "default"
    encodec_weights: str | None = None
    cache_dir: str | None = None
    max_seconds: float = datamod.DEFAULT_MAX_SECONDS
    max_text_chars: int = datamod.DEFAULT_MAX_TEXT_CHARS
    val_fraction: float = 0.02
    steps: int = 2000
    batch_size: int = 16  # global, in utterances
    micro_batch_size: int = 0  # utterances per forward on one rank; 0: batch_size / world size
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # model (None: ModelConfig's default, or the base checkpoint's value)
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    max_seq_len: int | None = None
    dropout: float | None = None
    mtp_heads: int | None = None
    mtp_kind: str | None = None
    mtp_weights: str | None = None
    mtp_decay: float | None = None
    init_from: str | None = None  # --from
    heads_only: bool = False
    distill: bool = False
    resume: bool = False
    val_every: int = 200
    save_every: int = 500
    log_every: int = 10
    stop_after: int = 0  # stop (and save) after this step, as if interrupted; the schedule still spans --steps
    keep_best: bool = False  # also keep the weights of the lowest validation loss in <out>/best/
    time_budget: float = 0.0  # minutes; >0: fit --steps to the measured speed, and stop (saving) at the deadline
    seed: int = 0
    device: str | None = None
    threads: int = 0
    progress: bool = True
    plot: bool = True


# -- distributed plumbing ----------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device_flag: str | None) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        use_cuda = torch.cuda.is_available() and device_flag != "cpu"
        if use_cuda:
            torch.cuda.set_device(d.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            d.owns_group = True
        device = torch.device(f"cuda:{d.local_rank}") if use_cuda else torch.device("cpu")
    else:
        device = pick_device(device_flag)
    return d, device


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr down to lr * min_lr_ratio at `steps`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _every(step: int, n: int) -> bool:
    return n > 0 and step % n == 0


def _split(ids: list[int], n: int) -> list[list[int]]:
    """n nearly equal contiguous chunks (batches are length-sorted, so each chunk pads little)."""
    q, r = divmod(len(ids), n)
    out, s = [], 0
    for i in range(n):
        e = s + q + (i < r)
        out.append(ids[s:e])
        s = e
    return out


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    random.setstate(s["python"])


def _as_config(cfg) -> TrainConfig:
    if isinstance(cfg, TrainConfig):
        return dataclasses.replace(cfg)
    d = vars(cfg) if isinstance(cfg, argparse.Namespace) else dict(cfg)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(d) - names
    if bad:
        raise SpeechMTPError(f"unknown training option(s) {sorted(bad)}")
    return TrainConfig(**d)


# -- model setup -------------------------------------------------------------------------------------
_ARCH = ("d_model", "n_layers", "n_heads", "max_seq_len")
_HEAD = ("mtp_heads", "mtp_kind", "mtp_weights", "mtp_decay", "dropout")


def _build_model(cfg: TrainConfig, codec, codec_spec: str) -> SpeechLM:
    out = Path(cfg.out)
    if cfg.resume:  # architecture and heads as saved by the interrupted run; weights come from the state
        return SpeechLM.from_pretrained(out)
    if cfg.init_from:
        given = [k for k in _ARCH if getattr(cfg, k) is not None]
        if given:
            raise SpeechMTPError(f"--{given[0].replace('_', '-')} cannot change a --from checkpoint's architecture; drop it")
        overrides = {k: getattr(cfg, k) for k in _HEAD if getattr(cfg, k) is not None}
        model = SpeechLM.from_pretrained(cfg.init_from, **overrides)
    else:
        torch.manual_seed(cfg.seed)
        fields = {k: getattr(cfg, k) for k in _ARCH + _HEAD if getattr(cfg, k) is not None}
        model = SpeechLM(ModelConfig(n_codebooks=codec.n_codebooks, codebook_size=codec.codebook_size,
                                     codec=codec_spec, **fields))
    if (model.cfg.n_codebooks, model.cfg.codebook_size) != (codec.n_codebooks, codec.codebook_size):
        raise SpeechMTPError(
            f"codec {codec_spec!r} has {codec.n_codebooks} codebooks of {codec.codebook_size} but the model expects "
            f"{model.cfg.n_codebooks} of {model.cfg.codebook_size}; pass the --codec the base model was trained with")
    model.cfg.codec = codec_spec
    return model


def _checkpoint_codec(cfg: TrainConfig) -> str | None:
    src = Path(cfg.out) if cfg.resume else (Path(cfg.init_from) if cfg.init_from else None)
    if src is None or not (src / "config.json").is_file():
        return None
    return json.loads((src / "config.json").read_text()).get("codec")


# -- evaluation ----------------------------------------------------------------------------------------
def _weighted(acc: dict, metrics: dict, w: float) -> None:
    for k, v in metrics.items():
        acc[k] = acc.get(k, 0.0) + w * float(v)


@torch.no_grad()
def evaluate(model: SpeechLM, ds: datamod.TokenDataset, micro: int, device, autocast, distill: bool = False) -> dict:
    """Frame-weighted mean of compute_loss metrics over the validation set (same weighting as training)."""
    if len(ds) == 0:
        return {}
    was = model.training
    model.eval()
    lengths = ds.lengths()
    order = sorted(range(len(ds)), key=lambda i: lengths[i])
    total = sum(ds.items[i].n_frames for i in order)
    acc: dict = {}
    for s in range(0, len(order), micro):
        batch = datamod.collate([ds[i] for i in order[s:s + micro]])
        w = float(batch["code_len"].sum()) / total
        with autocast():
            _, m = model.compute_loss({k: v.to(device) for k, v in batch.items()}, distill=distill)
        _weighted(acc, m, w)
    model.train(was)
    k = model.cfg.mtp_heads
    if k and "expected_accept_per_step" not in acc:  # chain of heads accepted in a row
        run, exp = 1.0, 1.0
        for j in range(1, k + 1):
            run *= acc.get(f"accept_frame_mtp{j}", acc.get(f"acc_mtp{j}", 0.0))
            exp += run
        acc["expected_accept_per_step"] = exp
    return acc


def _short(m: dict, k: int) -> str:
    parts = [f"loss {m.get('loss', float('nan')):.3f}", f"main {m.get('loss_main', 0):.3f}/{m.get('acc_main', 0):.2f}"]
    parts += [f"h{j} {m.get(f'loss_mtp{j}', 0):.3f}/{m.get(f'acc_mtp{j}', 0):.2f}" for j in range(1, k + 1)]
    return " ".join(parts)


# -- outputs -------------------------------------------------------------------------------------------
def _save(out: Path, model: SpeechLM, opt, pos: dict, cfg: TrainConfig, rngs: list[dict]) -> None:
    model.save_pretrained(out)
    state = {"version": 1, **pos, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": opt.state_dict(), "rng": rngs, "heads_only": cfg.heads_only, "seed": cfg.seed,
             "steps": cfg.steps, "batch_size": cfg.batch_size}
    atomic_torch_save(state, out / STATE_FILE)


def _plot(out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(x) for x in (out / METRICS_FILE).read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(8, 5))
    keys = sorted({k for r in rows for k in r if k == "loss_main" or k.startswith("loss_mtp")})
    for split, style in (("train", "-"), ("val", "o--")):
        sel = [r for r in rows if r.get("split") == split]
        for i, key in enumerate(keys):
            pts = [(r["step"], r[key]) for r in sel if key in r]
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", label=f"{split} {key}", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out / ".loss.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out / "loss.png")


def _model_card(out: Path, cfg: TrainConfig, model: SpeechLM, corpus, n_train: int, n_val: int,
                step: int, final: dict, world: int) -> None:
    mc = model.cfg
    kind = "MTP heads trained on a frozen base" if cfg.heads_only else "speech LM"
    lines = [f"# {out.name}", "", f"A speechmtp {kind}: {model.num_params() / 1e6:.2f} M parameters "
             f"({sum(p.numel() for p in model.mtp_parameters()) / 1e6:.2f} M in {mc.mtp_heads} {mc.mtp_kind} MTP heads).", "",
             "| | |", "|---|---|", f"| data | `{cfg.data}` ({n_train} train / {n_val} validation utterances, "
             f"{sum(it.n_frames for it in corpus.items) / corpus.frame_rate / 60:.1f} min) |",
             f"| codec | `{mc.codec}` |", f"| base | `{cfg.init_from or '-'}`{' (distilled heads)' if cfg.distill else ''} |",
             f"| steps | {step} of {cfg.steps}, global batch {cfg.batch_size}, {world} process(es) |",
             f"| optimiser | AdamW lr {cfg.lr:g}, warm-up {cfg.warmup}, cosine to {cfg.lr * cfg.min_lr_ratio:g}, "
             f"weight decay {cfg.weight_decay:g}, clip {cfg.grad_clip:g} |",
             f"| model | d_model {mc.d_model}, {mc.n_layers} layers, {mc.n_heads} heads, MTP weights {mc.mtp_weights} |", "",
             "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(final.items()) if isinstance(v, float)]
    lines += ["", "Loss curves: `loss.png`; every logged step: `metrics.jsonl`. Resume with `--resume`.", ""]
    atomic_write_text(out / "README.md", "\n".join(lines))


# -- the loop --------------------------------------------------------------------------------------------
def train(config) -> dict:
    """Train as `config` (TrainConfig, argparse Namespace or dict) says; returns the final metrics.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 alone writes files.
    """
    cfg = _as_config(config)
    if not cfg.data or not cfg.out:
        raise SpeechMTPError("both --data and --out are required")
    if not Path(cfg.data).exists():
        raise SpeechMTPError(f"--data {cfg.data} does not exist; pass an LJSpeech folder, a JSONL manifest or a folder of .wav/.txt pairs")
    for name in ("steps", "batch_size", "lr"):
        if not getattr(cfg, name) > 0:
            raise SpeechMTPError(f"--{name.replace('_', '-')} must be positive; got {getattr(cfg, name)}")
    if cfg.micro_batch_size < 0 or cfg.warmup < 0 or cfg.grad_clip < 0 or cfg.weight_decay < 0:
        raise SpeechMTPError("--micro-batch-size, --warmup, --grad-clip and --weight-decay must not be negative")
    if cfg.heads_only and not (cfg.init_from or cfg.resume):
        raise SpeechMTPError("--heads-only trains new MTP heads on a base model; add --from checkpoints/BASE")
    out = Path(cfg.out)
    if cfg.resume and not (out / STATE_FILE).is_file():
        raise SpeechMTPError(f"--resume: no {STATE_FILE} in {out}; start without --resume")
    if not cfg.resume and (out / STATE_FILE).is_file():
        raise SpeechMTPError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dd, device = _setup_dist(cfg.device)
    try:
        return _train(cfg, dd, device)
    finally:
        if dd.owns_group:
            dist.destroy_process_group()


def _encode_and_build(cfg: TrainConfig, dd: Dist, device: torch.device, codec_spec: str):
    """Encode the corpus into the token cache (resumably) and build the model for its codec."""
    from .codec import load_codec

    # data: rank 0 encodes (resumably) while the others wait; then each node's first rank, which finds
    # the cache done on a shared file system or encodes its own copy on a node-local one; then the rest
    codec = load_codec(codec_spec, device=device if dd.local_rank == 0 else "cpu", encodec_weights=cfg.encodec_weights)
    wait = None
    if dd.world > 1:  # encoding a corpus can outlast NCCL's collective timeout, so wait on a patient gloo group
        from datetime import timedelta

        wait = dist.new_group(backend="gloo", timeout=timedelta(hours=6))
    corpus = None
    for turn in ("main", "node", "rest"):
        mine = {"main": dd.main, "node": dd.local_rank == 0 and not dd.main, "rest": dd.local_rank != 0}[turn]
        if mine:
            corpus = datamod.encode_corpus(cfg.data, codec, cfg.cache_dir, cfg.max_seconds, cfg.max_text_chars,
                                           progress=cfg.progress and turn != "rest", verbose=turn != "rest")
        if wait is not None:
            dist.barrier(group=wait)
    return corpus, _build_model(cfg, codec, codec_spec)


def _train(cfg: TrainConfig, dd: Dist, device: torch.device) -> dict:
    out = Path(cfg.out)
    codec_spec = cfg.codec or _checkpoint_codec(cfg) or "default"
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if dd.main else (lambda *a: None)

    if datamod.is_token_pack(cfg.data):  # codes made elsewhere: no codec, no audio, no encoding here
        corpus, pack = datamod.load_token_pack(cfg.data)
        if cfg.codec and cfg.codec != pack["codec_spec"]:
            raise SpeechMTPError(f"token pack {cfg.data} holds codes of codec {pack['codec_spec']!r}, not {cfg.codec!r}")
        codec_spec = cfg.codec or _checkpoint_codec(cfg) or pack["codec_spec"]
        log(f"token pack: {len(corpus.items)} items ({sum(it.n_frames for it in corpus.items) / corpus.frame_rate / 3600:.2f} h)"
            f" of codec {pack['codec_spec']!r}")
        model = _build_model(cfg, SimpleNamespace(**pack), codec_spec)
    else:
        corpus, model = _encode_and_build(cfg, dd, device, codec_spec)
    q, k_heads = model.cfg.n_codebooks, model.cfg.mtp_heads
    # the longest sequence an item makes: text + BOS step + delayed frames + the heads' look-ahead
    fits = [it for it in corpus.items if len(text_encode(it.text)) + it.n_frames + q + k_heads + 1
            <= model.cfg.max_seq_len]
    if len(fits) < len(corpus.items):
        log(f"skipped {len(corpus.items) - len(fits)} items longer than max_seq_len {model.cfg.max_seq_len}")
    train_items, val_items = datamod.split_train_val(fits, cfg.val_fraction)
    if not train_items:
        raise SpeechMTPError(f"no usable training items in {cfg.data}; see the skip summary above")
    train_ds, val_ds = datamod.TokenDataset(train_items), datamod.TokenDataset(val_items)
    lengths = train_ds.lengths()

    micro = cfg.micro_batch_size or max(1, cfg.batch_size // dd.world)
    n_micro = math.ceil(cfg.batch_size / micro)
    if n_micro % dd.world:
        raise SpeechMTPError(
            f"--batch-size {cfg.batch_size} makes {n_micro} micro-batches of {micro}, which {dd.world} processes cannot "
            f"share evenly; use a batch size that is a multiple of micro-batch-size x processes ({micro * dd.world})")
    if cfg.batch_size > len(train_ds):
        raise SpeechMTPError(f"--batch-size {cfg.batch_size} exceeds the {len(train_ds)} training items; lower it")

    # parameters: heads-only freezes everything but the MTP heads, and the optimiser never sees the rest
    model.to(device).train()
    if cfg.heads_only:
        if k_heads == 0:
            raise SpeechMTPError("--heads-only needs MTP heads; pass --mtp-heads K (K >= 1)")
        head_ids = {id(p) for p in model.mtp_parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    # matrices decay; gains, biases and the like do not
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95))

    pos = {"step": 0, "epoch": 0, "batch_idx": 0}
    torch.manual_seed(cfg.seed + dd.rank)  # dropout streams differ per rank; data order does not use these
    np.random.seed(cfg.seed + dd.rank)
    random.seed(cfg.seed + dd.rank)
    if cfg.resume:
        st = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        if bool(st["heads_only"]) != cfg.heads_only:
            raise SpeechMTPError(f"the run in {out} was started {'with' if st['heads_only'] else 'without'} "
                                 "--heads-only; resume it with the same flag")
        if int(st["batch_size"]) != cfg.batch_size or int(st["seed"]) != cfg.seed:
            log("warning: --batch-size/--seed differ from the interrupted run; the data order will differ")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        pos = {k: int(st[k]) for k in pos}
        _set_rng_state(st["rng"][dd.rank % len(st["rng"])])
        if cfg.time_budget:  # keep the schedule the first run fitted to its budget
            cfg.steps = int(st["steps"])
        log(f"resumed {out} at step {pos['step']}")
    runner = _LossModule(model)
    if dd.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        runner = DDP(runner, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    metrics_path = out / METRICS_FILE
    if dd.main:
        out.mkdir(parents=True, exist_ok=True)
        kept = []
        if cfg.resume and metrics_path.is_file():  # drop what the interrupted run logged after its last save
            kept = [x for x in metrics_path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= pos["step"]]
        atomic_write_text(metrics_path, "".join(x + "\n" for x in kept))
        log(f"training {model.num_params() / 1e6:.2f} M parameters ({sum(p.numel() for p in params) / 1e6:.2f} M "
            f"trainable) on {len(train_ds)} items ({len(val_ds)} held out), {dd.world} process(es) on {device}, "
            f"global batch {cfg.batch_size} = {n_micro} micro-batches of <= {micro}")

    def write_metrics(row: dict) -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def checkpoint() -> None:
        rngs = [_rng_state()]
        if dd.world > 1:
            rngs = [None] * dd.world
            dist.all_gather_object(rngs, _rng_state())
        if dd.main:
            _save(out, model, opt, pos, cfg, rngs)

    plan_epoch, plan = -1, []
    best_val = math.inf  # --keep-best: a resumed run competes with the best the interrupted one kept
    if cfg.keep_best and (out / "best" / "best.json").is_file():
        best_val = json.loads((out / "best" / "best.json").read_text())["loss"]
    last_train: dict = {}
    last_val: dict = {}
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=pos["step"], desc="train", disable=not (dd.main and cfg.progress),
               file=sys.stderr, dynamic_ncols=True)
    t0 = time.monotonic()
    interrupted = False
    budget = _TimeBudget(cfg.time_budget, pos["step"], not cfg.resume, dd, device, log) if cfg.time_budget else None
    try:
        while pos["step"] < end:
            if budget is not None:
                steps, stop_now = budget.check(pos["step"], cfg.steps)
                if steps != cfg.steps:
                    cfg.steps = bar.total = steps
                    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
                if stop_now and end > pos["step"] + 1:  # one last step, then validate and save as at the end
                    log(f"time budget of {cfg.time_budget:g} min spent at step {pos['step']}: stopping")
                    end = pos["step"] + 1
            if plan_epoch != pos["epoch"]:
                plan, plan_epoch = datamod.epoch_batches(lengths, cfg.batch_size, cfg.seed, pos["epoch"]), pos["epoch"]
            ids = plan[pos["batch_idx"]]
            # the position advances only with the optimiser step, so a Ctrl-C mid-step saves a consistent state
            nxt = {"step": pos["step"] + 1, "epoch": pos["epoch"], "batch_idx": pos["batch_idx"] + 1}
            if nxt["batch_idx"] == len(plan):
                nxt["epoch"], nxt["batch_idx"] = nxt["epoch"] + 1, 0
            total = float(sum(train_items[i].n_frames for i in ids))
            chunks = _split(ids, n_micro)
            mine = chunks[dd.rank::dd.world]
            acc: dict = {}
            for j, chunk in enumerate(mine):
                batch = {k: v.to(device, non_blocking=True) for k, v in datamod.collate([train_ds[i] for i in chunk]).items()}
                w = float(batch["code_len"].sum()) / total
                sync = runner.no_sync if (dd.world > 1 and j < len(mine) - 1) else nullcontext
                with sync():
                    with autocast():
                        loss, m = runner(batch, cfg.distill)
                    # DDP averages gradients over ranks: scale by world so the weights sum to 1
                    (loss * (w * dd.world)).backward()
                _weighted(acc, m, w)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr = lr_at(pos["step"], cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
            pos.update(nxt)
            if dd.world > 1:  # the logged metrics are the whole global batch's
                keys = sorted(acc)
                vec = torch.tensor([acc[k] for k in keys], dtype=torch.float64, device=device)
                dist.all_reduce(vec)
                acc = dict(zip(keys, vec.tolist()))
            last_train = acc
            step = pos["step"]
            if dd.main:
                bar.update(1)
                bar.set_postfix_str(_short(acc, k_heads), refresh=False)
                if _every(step, cfg.log_every) or step == end:
                    write_metrics({"step": step, "split": "train", "lr": lr, "time_s": round(time.monotonic() - t0, 2), **acc})
                if val_ds and (_every(step, cfg.val_every) or step == end):
                    last_val = evaluate(model, val_ds, micro, device, autocast, cfg.distill)
                    write_metrics({"step": step, "split": "val", **last_val})
                    if cfg.keep_best and last_val["loss"] < best_val:
                        best_val = last_val["loss"]
                        model.save_pretrained(out / "best")
                        atomic_write_text(out / "best" / "best.json", json.dumps({"step": step, **last_val}) + "\n")
                    bar.write(f"step {step} val: {_short(last_val, k_heads)}  expected frames/step "
                              f"{last_val.get('expected_accept_per_step', 1.0):.2f}", file=sys.stderr)
            if _every(step, cfg.save_every) or step == end:
                checkpoint()
    except KeyboardInterrupt:
        if dd.world > 1 or pos["step"] == 0:  # DDP peers may be gone: nothing consistent to save
            raise
        log(f"interrupted: saving step {pos['step']} to {out} (continue with --resume)")
        checkpoint()  # a finished step is worth keeping, with its card and plot below
        interrupted = True
    finally:
        bar.close()

    final = {"step": pos["step"], **{f"train_{k}": v for k, v in last_train.items()},
             **{f"val_{k}": v for k, v in last_val.items()}}
    if dd.main:
        if cfg.plot:
            _plot(out)
        _model_card(out, cfg, model, corpus, len(train_ds), len(val_ds), pos["step"], final, dd.world)
        log(f"saved {out} at step {pos['step']}: {_short(last_train, k_heads)}")
    if interrupted:
        raise KeyboardInterrupt
    return final


class _TimeBudget:
    """--time-budget: time steps 31..130 of this run, shrink the schedule to what fits, and say when the deadline
    has passed. On a GPU the first tens of steps are several times slower (allocator, a kernel choice per new
    batch shape): fitting on steps 6..25 once cut a 7-minute budget to 3.6 minutes of training."""

    def __init__(self, minutes: float, start_step: int, fit: bool, dd: Dist, device: torch.device, log):
        self.limit_s, self.t0 = 60 * minutes, time.monotonic()
        self.fit_from, self.fit_at = start_step + 30, (start_step + 130 if fit else -1)  # a resumed run keeps its fit
        self.t_fit, self.dd, self.device, self.log = self.t0, dd, device, log

    def check(self, step: int, steps: int) -> tuple[int, bool]:
        """Before step `step + 1` -> (the schedule's total steps, whether the deadline has passed)."""
        now = time.monotonic()
        if step == self.fit_from:
            self.t_fit = now
        stop, took = now - self.t0 > self.limit_s, now - self.t_fit
        if self.dd.world > 1:  # rank 0's clock decides for every rank
            flag = torch.tensor([float(stop), took], device=self.device)
            dist.broadcast(flag, 0)
            stop, took = bool(flag[0]), float(flag[1])
        if step == self.fit_at:
            per_step = took / (self.fit_at - self.fit_from)
            fitted = step + max(1, int(0.9 * (self.limit_s - (now - self.t0)) / per_step))  # 10% for validation, saves
            if fitted < steps:
                self.log(f"time budget {self.limit_s / 60:g} min at {per_step * 1000:.0f} ms/step: "
                         f"{steps} steps -> {fitted} (the schedule follows)")
                return fitted, stop
        return steps, stop


class _LossModule(torch.nn.Module):
    """compute_loss as a forward(): DDP prepares its gradient all-reduce only for work done inside forward."""

    def __init__(self, model: SpeechLM):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, distill: bool):
        return self.model.compute_loss(batch, distill=distill)


# -- CLI -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechmtp train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    datamod.add_data_args(p)
    p.set_defaults(codec=None)
    p.add_argument("--out", required=True, help="output checkpoint folder, e.g. checkpoints/NAME")
    p.add_argument("--val-fraction", type=float, default=0.02, help="share of items held out (by hash of id)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--batch-size", type=int, default=16, help="global batch, utterances (split over processes)")
    g.add_argument("--micro-batch-size", type=int, default=0, help="utterances per forward per process (0: batch/processes); "
                   "fix it to make runs with different process counts identical")
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr x this")
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="0 turns clipping off")
    g = p.add_argument_group("model (defaults: ModelConfig's, or the --from checkpoint's)")
    for name, typ in (("d-model", int), ("n-layers", int), ("n-heads", int), ("max-seq-len", int), ("dropout", float),
                      ("mtp-heads", int), ("mtp-decay", float)):
        g.add_argument(f"--{name}", type=typ, default=None)
    g.add_argument("--mtp-kind", choices=["independent", "cascaded"], default=None)
    g.add_argument("--mtp-weights", choices=["constant", "linear", "geometric"], default=None)
    g.add_argument("--from", dest="init_from", default=None, help="start from this checkpoint (with --heads-only: the frozen base)")
    g.add_argument("--heads-only", action="store_true", help="freeze the base; train only (new) MTP heads")
    g.add_argument("--distill", action="store_true", help="MTP targets are the model's own main-head distributions")
    g = p.add_argument_group("run")
    g.add_argument("--resume", action="store_true", help=f"continue the run in --out from its {STATE_FILE}")
    g.add_argument("--val-every", type=int, default=200)
    g.add_argument("--save-every", type=int, default=500)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--keep-best", action="store_true", help="also keep the weights with the lowest validation loss "
                   "in OUT/best/ (a checkpoint folder like OUT)")
    g.add_argument("--time-budget", type=float, default=0.0, help="minutes: measure speed over the first steps, shrink "
                   "--steps to fit, and stop (saving) at the deadline; 0 = off")
    g.add_argument("--stop-after", type=int, default=0, help="stop and save after this step (the schedule still spans --steps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present; torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("--no-plot", dest="plot", action="store_false")
    return p


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # a scheduler's SIGTERM saves the last finished step, like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    final = train(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in final.items()}))
    return 0


if __name__ == "__main__":  # `torchrun -m speechmtp.train ...` / `python -m speechmtp.train ...`
    try:
        sys.exit(main())
    except SpeechMTPError as e:
        print(f"speechmtp train: error: {e}", file=sys.stderr)
        sys.exit(1)
