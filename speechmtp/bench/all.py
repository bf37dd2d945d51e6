"""`speechmtp bench all`: every benchmark in one run -> results.json, PNG plots and a Markdown table.

    speechmtp bench all [--out benchmarks/] [--checkpoint default] [--quick] [--update-readme]

Each figure names the machine it came from. A GPU run writes beside a CPU run (results are keyed
by device: benchmarks/cpu/, benchmarks/cuda/), so both can be committed and compared.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..utils import SpeechMTPError, atomic_write_text, pick_device

README_BEGIN = "<!-- bench-all:begin -->"
README_END = "<!-- bench-all:end -->"


def machine_label(device: torch.device) -> str:
    from .codec import machine_info

    m = machine_info(device)
    label = f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads"
    return f"{m['gpu']} + {label}" if m.get("gpu") else label


def depth_sweep(checkpoint: str, device: torch.device, texts: list[str], max_frames: int) -> list[dict]:
    """Greedy decoding at each draft depth 0 (= ntp) .. K on the same texts: speed and acceptance."""
    from .. import text as textmod
    from ..generate import GenerationConfig, generate
    from ..model import SpeechLM

    model = SpeechLM.from_pretrained(checkpoint, device=device).eval()
    ids = [textmod.encode(t) for t in texts]
    rows, base = [], None
    for d in range(0, model.cfg.mtp_heads + 1):
        cfg = GenerationConfig(mode="ntp" if d == 0 else "mtp", temperature=0.0, max_frames=max_frames,
                               draft_depth=None if d == 0 else d, seed=0)
        frames = steps = 0
        t0 = time.perf_counter()
        for x in ids:
            g = generate(model, x, cfg)
            for _ in g:
                pass
            frames += g.stats.frames
            steps += g.stats.forward_passes
        wall = time.perf_counter() - t0
        fps = frames / wall
        base = base or fps
        rows.append({"depth": d, "frames_per_s": fps, "speedup": fps / base, "frames_per_forward": frames / max(steps, 1)})
    return rows


def _plots(res: dict, out: Path, label: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name):
        fig.text(0.01, 0.01, label, fontsize=7, color="gray")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    if res.get("depth_sweep"):
        rows = res["depth_sweep"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ks = [r["depth"] for r in rows]
        ax.plot(ks, [r["speedup"] for r in rows], "o-", label="speedup over ntp")
        ax.plot(ks, [r["frames_per_forward"] for r in rows], "s--", label="frames per forward pass")
        ax.set_xlabel("MTP draft depth K (0 = ntp)")
        ax.set_xticks(ks)
        ax.set_title("Greedy decoding: speed vs MTP depth (lossless)")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "depth_speedup.png")
    dec = res.get("decode")
    if dec:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        width = 0.35
        for i, kind in enumerate(("greedy", "sampling")):
            acc = dec[kind]["mtp"]["depth_acceptance"]
            ax.bar([k + 1 + (i - 0.5) * width for k in range(len(acc))], acc, width, label=f"mtp {kind}")
        ax.set_xlabel("head depth k (predicts frame t+k+1)")
        ax.set_ylabel("acceptance rate")
        ax.set_ylim(0, 1)
        ax.set_title("Per-depth draft acceptance")
        ax.legend()
        save(fig, "acceptance_per_depth.png")
    serve = res.get("serve") or []
    if serve:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for r in serve:
            if r.get("ttfa_ms_all"):
                ax.hist(r["ttfa_ms_all"], bins=20, alpha=0.5, label=f"{r['clients']} clients")
        ax.set_xlabel("time to first audio (ms)")
        ax.set_ylabel("sessions")
        ax.set_title("Time to first audio over WebSocket")
        ax.legend()
        save(fig, "ttfa_hist.png")
        fig, ax = plt.subplots(figsize=(6, 3.6))
        n = [r["clients"] for r in serve]
        ax.plot(n, [r["rtf_per_stream"]["p50"] for r in serve], "o-", label="RTF per stream p50")
        ax.plot(n, [r["rtf_per_stream"]["p95"] for r in serve], "s--", label="RTF per stream p95")
        ax.axhline(1.0, color="red", lw=0.8, label="real time")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("real-time factor (lower is better)")
        ax.set_xticks(n)
        ax.set_title("Concurrent streams vs real-time factor")
        ax.legend()
        save(fig, "concurrency_rtf.png")
    return made


def markdown(res: dict) -> str:
    out = [f"Measured on {res['machine']} ({res['device']}), {res['date']}, checkpoint `{res['checkpoint']}`. "
           f"Rerun: `speechmtp bench all --out benchmarks/`.", ""]
    if res.get("codec"):
        out += ["| codec | weights | decode RTF | stream RTF (1-frame chunks) | chunk latency p50 / p95 (ms) | stream vs offline max diff |",
                "|---|---|---|---|---|---|"]
        for r in res["codec"]["results"]:
            out.append(f"| {r['codec']} | {r.get('weights', '')} | {r['decode_rtf']:.4f} | {r['stream_rtf']:.4f} | "
                       f"{r['chunk_latency_ms_p50']:.2f} / {r['chunk_latency_ms_p95']:.2f} | {r['stream_max_abs_diff']:.1e} |")
        out.append("")
    if res.get("decode"):
        d = res["decode"]
        out += ["| decode (batch 1) | frames/s | accepted frames per step | speedup over ntp |", "|---|---|---|---|"]
        for kind in ("greedy", "sampling"):
            for mode, r in d[kind].items():
                out.append(f"| {kind} {mode} | {r['frames_per_s']:.1f} | {r['accepted_per_step']:.2f} | {r.get('speedup', 1.0):.2f}x |")
        out += ["", f"Greedy `mtp` identical to `ntp`: **{d['greedy_identical']}**.", ""]
    if res.get("voice"):
        v = res["voice"]
        out += ["| voice | RTF | RTF vs teacher | TTFA p50, ten words (ms) |", "|---|---|---|---|"]
        if "teacher" in v:
            out.append(f"| teacher (Piper joe-medium) | {v['teacher']['rtf']:.3f} | 1.00 | {v['teacher']['ttfa_ms_p50']:.0f} |")
        for m, r in v["modes"].items():
            out.append(f"| speechmtp {m} | {r['rtf']:.3f} | {r.get('rtf_vs_teacher', float('nan')):.2f} | {r['ttfa_ms_p50']:.0f} |")
        out.append("")
    if res.get("serve"):
        out += ["| WebSocket clients | sessions | TTFA p50 / p95 (ms) | RTF per stream p50 / p95 | late chunks | errors |",
                "|---|---|---|---|---|---|"]
        for r in res["serve"]:
            out.append(f"| {r['clients']} | {r['sessions']} | {r['ttfa_ms']['p50']} / {r['ttfa_ms']['p95']} | "
                       f"{r['rtf_per_stream']['p50']} / {r['rtf_per_stream']['p95']} | {r['underruns']['late_chunks']} | "
                       f"{sum(r['errors'].values()) if r['errors'] else 0} |")
        out.append("")
    for name in res.get("plots", []):
        out.append(f"![{name}]({res['plot_dir']}/{name})")
    return "\n".join(out) + "\n"


def update_readme(readme: Path, table: str) -> bool:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write_text(readme, f"{head}{README_BEGIN}\n{table}{README_END}{tail}")
    return True


def run_all(out: Path, checkpoint: str = "default", device: str | None = None, quick: bool = False,
            clients: tuple[int, ...] = (1, 2, 4, 8), serve_seconds: float = 15.0, skip: tuple[str, ...] = ()) -> dict:
    from .codec import run_codec_bench
    from .decode import run_decode_bench

    from ..engine import Engine

    name, checkpoint = checkpoint, str(Engine.resolve_checkpoint(checkpoint))  # a name under checkpoints/ or a folder
    dev = pick_device(device)
    sub = out / dev.type
    sub.mkdir(parents=True, exist_ok=True)
    label = machine_label(dev)
    res: dict = {"machine": label, "device": str(dev), "checkpoint": name, "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d"), "plot_dir": dev.type}
    texts = ["The quick brown fox jumps over the lazy dog.", "Streaming speech starts before the sentence is done.",
             "Dr. Lee paid $3.50 for two coffees on March 3, 2024."]
    max_frames = 120 if quick else 400
    if "codec" not in skip:
        print("== codec", flush=True)
        # the process's thread setting (OMP_NUM_THREADS), not "all cores": 1-frame pushes are dispatch-bound
        res["codec"] = run_codec_bench(seconds=3.0 if quick else 6.0, device=device, threads=torch.get_num_threads())
    if "decode" not in skip:
        print("== decode", flush=True)
        res["decode"] = run_decode_bench(checkpoint, texts, device=device, max_frames=max_frames, reference=False)
        res["depth_sweep"] = depth_sweep(checkpoint, dev, texts, max_frames)
    if "voice" not in skip:
        print("== voice", flush=True)
        try:
            from .voice import run_voice_bench

            res["voice"] = run_voice_bench(checkpoint, n=3 if quick else 10, device=device)
        except (ImportError, SpeechMTPError) as e:
            res["voice_skipped"] = str(e)
    if "serve" not in skip:
        from .serve import run_serve_bench

        res["serve"] = []
        for n in clients:
            print(f"== serve, {n} clients", flush=True)
            res["serve"].append(run_serve_bench(n, 4.0 if quick else serve_seconds, checkpoint, device=device,
                                                max_frames=max_frames))
    res["plots"] = _plots(res, sub, label)
    atomic_write_text(sub / "results.json", json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    atomic_write_text(sub / "results.md", table)
    return res


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="speechmtp bench all", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks", help="folder for results (a subfolder per device)")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent WebSocket clients to try")
    ap.add_argument("--serve-seconds", type=float, default=15.0)
    ap.add_argument("--skip", default="", help="comma list of codec,decode,voice,serve")
    ap.add_argument("--update-readme", default=None, metavar="README",
                    help=f"replace the block between {README_BEGIN} and {README_END} in this file")
    a = ap.parse_args(argv)
    clients = tuple(int(c) for c in a.clients.split(",") if c)
    if not clients or min(clients) < 1:
        raise SpeechMTPError("--clients needs positive integers, e.g. 1,2,4")
    out = Path(a.out)
    res = run_all(out, a.checkpoint, a.device, a.quick, clients, a.serve_seconds,
                  tuple(s for s in a.skip.split(",") if s))
    table = markdown(res)
    if a.update_readme:
        readme = Path(a.update_readme)
        # the README sits at the repo root, the plots under out/: make image links relative to it
        rel = os.path.relpath(out / res["plot_dir"], readme.parent)
        table = table.replace(f"]({res['plot_dir']}/", f"]({rel}/")
        if not update_readme(readme, table):
            raise SpeechMTPError(f"{readme} has no {README_BEGIN} ... {README_END} block to update")
    print(table)
    return 0
