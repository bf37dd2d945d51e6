"""Data-parallel training: two gloo processes under torchrun follow one process's loss curve exactly."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from speechmtp import train as trainmod
from speechmtp.codec.builtin import BuiltinCodec, tiny_config
from speechmtp.utils import load_safetensors

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


def test_two_processes_match_one(tmp_path):
    data = make_corpus(tmp_path / "corpus", n=14, seed=3)  # clips of different lengths: weighting matters
    torch.manual_seed(0)
    BuiltinCodec(tiny_config(hop_length=320, n_fft=320, n_codebooks=2, codebook_size=16), device="cpu").save(tmp_path / "codec")
    common = ["--data", str(data), "--codec", str(tmp_path / "codec"), "--steps", "12", "--batch-size", "6",
              "--micro-batch-size", "3", "--lr", "3e-3", "--warmup", "3", "--d-model", "32", "--n-layers", "2",
              "--n-heads", "2", "--mtp-heads", "2", "--val-every", "6", "--save-every", "6", "--log-every", "1",
              "--seed", "1", "--device", "cpu", "--threads", "1", "--no-progress", "--no-plot"]
    # encode the cache first, as the docs advise, so both runs read identical codes
    assert trainmod.main(common + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "speechmtp.train", *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 process(es)" in proc.stderr
    one, two = train_rows(tmp_path / "one"), train_rows(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 13))
    for a, b in zip(one, two):
        for key in ("loss", "loss_main", "loss_mtp1", "loss_mtp2", "acc_main"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-6, (a["step"], key, a[key], b[key])
    rel = max(abs(a[k] - b[k]) / abs(a[k]) for a, b in zip(one, two) for k in ("loss", "loss_main", "loss_mtp2"))
    print(f"1 vs 2 processes: max relative loss difference {rel:.2e}")
    assert one[-1]["loss"] < one[0]["loss"]
    wa, wb = load_safetensors(tmp_path / "one" / "model.safetensors"), load_safetensors(tmp_path / "two" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    # one process doing the whole batch in one forward (no accumulation) optimises nearly the same objective
    assert trainmod.main([*common, "--micro-batch-size", "6", "--out", str(tmp_path / "whole")]) == 0
    whole = train_rows(tmp_path / "whole")
    rel = max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(whole, two))
    print(f"one forward of 6 vs 2 processes x 3: max relative loss difference {rel:.2e}")
    assert rel < 0.05
    st = torch.load(tmp_path / "two" / "train_state.pt", weights_only=True)
    assert st["step"] == 12 and len(st["rng"]) == 2  # both ranks' RNG states, for an exact resume
