"""Training end to end on a tiny corpus, tiny random codec and tiny model (CPU, seconds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechmtp import train as trainmod
from speechmtp.codec.builtin import BuiltinCodec, tiny_config
from speechmtp.model import SpeechLM
from speechmtp.utils import SpeechMTPError, load_safetensors

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def make_corpus(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Pairs of chirps (pitch tied to the text, so there is something to learn) and their words."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w = [WORDS[j] for j in rng.integers(0, len(WORDS), 2)]
        dur = 0.3 + 0.04 * len(" ".join(w)) / 4
        t = np.arange(int(dur * 16000)) / 16000
        f0 = 150 + 30 * WORDS.index(w[0])
        wav = 0.4 * np.sin(2 * np.pi * (f0 + 200 * t) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(str(root / f"u{i:02d}.wav"), wav.astype(np.float32), 16000)
        (root / f"u{i:02d}.txt").write_text(" ".join(w) + ".")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    codec = BuiltinCodec(tiny_config(hop_length=320, n_fft=320, n_codebooks=2, codebook_size=16), device="cpu")
    codec.save(base / "codec")
    return {"data": str(make_corpus(base / "corpus")), "codec": str(base / "codec"), "base": base}


def cfg(setup, out, **kw):
    c = dict(data=setup["data"], codec=setup["codec"], out=str(setup["base"] / out), steps=30, batch_size=4,
             lr=3e-3, warmup=5, d_model=32, n_layers=2, n_heads=2, mtp_heads=2, val_every=15, save_every=10,
             log_every=1, val_fraction=0.2, progress=False, threads=1, device="cpu")
    c.update(kw)
    return c


def weights(folder) -> dict:
    return load_safetensors(Path(folder) / "model.safetensors")


def test_end_to_end_loss_falls_and_checkpoint_reloads(setup):
    final = trainmod.train(cfg(setup, "e2e"))
    out = setup["base"] / "e2e"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in tr] == list(range(1, 31))
    first, last = np.mean([r["loss"] for r in tr[:3]]), np.mean([r["loss"] for r in tr[-3:]])
    assert last < 0.8 * first, (first, last)
    assert any(r["split"] == "val" and "expected_accept_per_step" in r for r in rows)
    assert final["step"] == 30 and "val_loss_mtp2" in final and "train_acc_mtp1" in final
    for name in ("config.json", "model.safetensors", "train_state.pt", "README.md", "loss.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["codec"] == setup["codec"]
    # train_state is tensors and primitives only
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert st["step"] == 30
    # the saved model reproduces the trained model's outputs
    model = SpeechLM.from_pretrained(out).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, st["model"][k]), k
    from speechmtp import data
    from speechmtp.codec import load_codec

    corpus = data.encode_corpus(setup["data"], load_codec(setup["codec"], device="cpu"), progress=False, verbose=False)
    ds = data.TokenDataset(corpus.items[:3])
    batch = data.collate([ds[i] for i in range(3)])
    fresh = SpeechLM.from_pretrained(out).eval()
    with torch.no_grad():
        la, ma = model.compute_loss(batch)
        lb, mb = fresh.compute_loss(batch)
    assert torch.equal(la, lb) and ma == mb
    assert abs(ma["loss_main"] - final["train_loss_main"]) < 2.0  # same scale as training reported


def test_resume_matches_uninterrupted_run(setup):
    trainmod.train(cfg(setup, "full", steps=20, save_every=100))
    trainmod.train(cfg(setup, "split", steps=20, save_every=100, stop_after=10))
    assert torch.load(setup["base"] / "split" / "train_state.pt", weights_only=True)["step"] == 10
    with pytest.raises(SpeechMTPError, match="--resume"):
        trainmod.train(cfg(setup, "split", steps=20))
    final = trainmod.train(cfg(setup, "split", steps=20, save_every=100, resume=True))
    assert final["step"] == 20
    a, b = weights(setup["base"] / "full"), weights(setup["base"] / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # a Ctrl-C in the middle of step 8 (after backward, before the optimiser step) saves step 7 and resumes exactly
    real_lr = trainmod.lr_at

    def interrupt(step, c):
        if step == 7:
            raise KeyboardInterrupt
        return real_lr(step, c)
    trainmod.lr_at = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            trainmod.train(cfg(setup, "ctrlc", steps=20, save_every=100))
    finally:
        trainmod.lr_at = real_lr
    assert torch.load(setup["base"] / "ctrlc" / "train_state.pt", weights_only=True)["step"] == 7
    trainmod.train(cfg(setup, "ctrlc", steps=20, save_every=100, resume=True))
    c = weights(setup["base"] / "ctrlc")
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=1e-5, atol=1e-6, msg=k)
    # the log is continuous: steps 1..20 once each
    steps = [json.loads(x)["step"] for x in (setup["base"] / "split" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == list(range(1, 21))


def test_heads_only_keeps_base_bit_identical(setup):
    base = setup["base"] / "e2e"
    if not (base / "model.safetensors").is_file():
        trainmod.train(cfg(setup, "e2e"))
    for kind, k in (("independent", 3), ("cascaded", 2)):
        out = f"heads-{kind}"
        trainmod.train(cfg(setup, out, steps=8, init_from=str(base), heads_only=True, mtp_heads=k, mtp_kind=kind,
                           d_model=None, n_layers=None, n_heads=None, codec=None))
        before, after = weights(base), weights(setup["base"] / out)
        back = [n for n in after if not n.startswith("heads.")]
        assert back and all(torch.equal(before[n], after[n]) for n in back)
        fresh = SpeechLM.from_pretrained(base, mtp_heads=k, mtp_kind=kind)
        heads = [n for n in after if n.startswith("heads.")]
        assert any(not torch.equal(fresh.state_dict()[n], after[n]) for n in heads)
        cfgj = json.loads((setup["base"] / out / "config.json").read_text())
        assert cfgj["mtp_heads"] == k and cfgj["mtp_kind"] == kind and cfgj["codec"] == setup["codec"]
    # --from without --heads-only fine-tunes everything
    trainmod.train(cfg(setup, "finetune", steps=3, init_from=str(base), d_model=None, n_layers=None, n_heads=None,
                       mtp_heads=None, codec=None, lr=1e-3))
    tuned = weights(setup["base"] / "finetune")
    base_w = weights(base)
    assert all(not torch.equal(tuned[n], base_w[n]) for n in ("text_emb.weight", "blocks.0.wqkv.weight", "out.weight"))
    with pytest.raises(SpeechMTPError, match="--from"):
        trainmod.train(cfg(setup, "bad", heads_only=True))
    with pytest.raises(SpeechMTPError, match="architecture"):
        trainmod.train(cfg(setup, "bad2", init_from=str(base), heads_only=True))


def test_distill_runs_and_cli(setup, capsys):
    out = setup["base"] / "distill"
    rc = trainmod.main(["--data", setup["data"], "--codec", setup["codec"], "--out", str(out), "--steps", "4",
                        "--batch-size", "4", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--mtp-heads", "2",
                        "--distill", "--no-progress", "--no-plot", "--device", "cpu", "--val-every", "2"])
    assert rc == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 4 and np.isfinite(final["train_loss_mtp1"])


def test_lr_schedule():
    c = trainmod.TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert trainmod.lr_at(0, c) == pytest.approx(0.1) and trainmod.lr_at(9, c) == pytest.approx(1.0)
    assert trainmod.lr_at(60, c) == pytest.approx(0.55) and trainmod.lr_at(110, c) == pytest.approx(0.1)


def test_token_pack_trains_like_the_corpus(setup, tmp_path):
    """A token pack (codes + texts, no audio, no codec) trains to the same weights as the corpus itself."""
    from speechmtp import data
    from speechmtp.codec import load_codec

    pack = tmp_path / "tokens.safetensors"
    assert data.main(["--data", setup["data"], "--codec", setup["codec"], "--pack", str(pack), "--device", "cpu"]) == 0
    corpus = data.encode_corpus(setup["data"], load_codec(setup["codec"], device="cpu"), progress=False, verbose=False)
    back, meta = data.load_token_pack(pack)
    assert [(i.id, i.text) for i in back.items] == [(i.id, i.text) for i in corpus.items]
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(back.items, corpus.items))
    assert meta["codec_spec"] == setup["codec"] and (meta["n_codebooks"], meta["codebook_size"]) == (2, 16)

    trainmod.train(cfg(setup, "from_corpus", steps=8, save_every=100))
    trainmod.train(cfg(setup, "from_pack", data=str(pack), codec=None, steps=8, save_every=100))
    a, b = weights(setup["base"] / "from_corpus"), weights(setup["base"] / "from_pack")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert json.loads((setup["base"] / "from_pack" / "config.json").read_text())["codec"] == setup["codec"]
    with pytest.raises(SpeechMTPError, match="holds codes of codec"):
        trainmod.train(cfg(setup, "wrong", data=str(pack), codec="encodec", steps=2))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a pack")
    with pytest.raises(SpeechMTPError, match="corrupt"):
        data.load_token_pack(bad)


def test_time_budget_fits_the_schedule_and_stops(setup):
    """--time-budget shrinks --steps to what fits, so the cosine schedule still ends, and saves at the deadline."""
    final = trainmod.train(cfg(setup, "budget", steps=100000, time_budget=0.05, val_every=10, save_every=10**6,
                               keep_best=True))
    out = setup["base"] / "budget"
    # --keep-best kept the validation row with the lowest loss, as a loadable checkpoint
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r["split"] == "val"]
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["loss"] == min(r["loss"] for r in vals) and best["step"] in [r["step"] for r in vals]
    assert SpeechLM.from_pretrained(out / "best").cfg == SpeechLM.from_pretrained(out).cfg
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert 25 < st["steps"] < 100000 and final["step"] <= st["steps"] and st["step"] == final["step"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if final["step"] == st["steps"]:  # finished the fitted schedule: the last lr is the floor of the cosine
        last = [r for r in rows if r["split"] == "train"][-1]
        assert last["lr"] == pytest.approx(trainmod.lr_at(st["steps"] - 1, trainmod.TrainConfig(**{
            **cfg(setup, "x"), "steps": st["steps"]})), rel=1e-6)
    # resuming keeps the fitted schedule rather than the 100000 asked for
    trainmod.train(cfg(setup, "budget", steps=100000, time_budget=0.05, resume=True, val_every=10**6))
    assert torch.load(out / "train_state.pt", weights_only=True)["steps"] == st["steps"]
