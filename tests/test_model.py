"""SpeechLM: delay pattern, KV cache == full forward, loss/metrics, checkpoints, sampling filters."""
import json
import math

import pytest
import torch

from speechmtp.model import ModelConfig, SpeechLM, apply_delay, last_step, undo_delay
from speechmtp.sampling import filter_logits, probs_from_logits, sample_from_probs
from speechmtp.utils import SpeechMTPError


def tiny(kind="independent", k=2, q=3, v=8, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(n_codebooks=q, codebook_size=v, d_model=32, n_layers=2, n_heads=2, max_seq_len=64,
                      mtp_heads=k, mtp_kind=kind, **kw)
    m = SpeechLM(cfg).eval()
    for p in m.heads.parameters():  # independent heads start as copies of the main head; make them differ
        torch.nn.init.normal_(p, std=0.1)
    return m


def batch(q=3, v=8):
    g = torch.Generator().manual_seed(1)
    return {"text": torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]]), "text_len": torch.tensor([5, 3]),
            "codes": torch.randint(0, v, (2, q, 6), generator=g), "code_len": torch.tensor([6, 4])}


def test_delay_roundtrip_and_slow_definition():
    codes = torch.randint(0, 8, (2, 3, 5))
    steps = apply_delay(codes, bos=9, end=8)
    assert steps.shape == (2, 3, 8)
    for q in range(3):  # the definition, one index at a time
        for s in range(8):
            want = 9 if s < q else (8 if s - q >= 5 else int(codes[0, q, s - q]))
            assert int(steps[0, q, s]) == want
    assert torch.equal(undo_delay(steps, 5), codes)
    assert torch.equal(undo_delay(steps, 5, start=2), codes[:, :, 2:])


def test_training_grid_matches_per_row_loop():
    m = tiny()
    b = batch()
    audio_in, grid, mask = m.training_grid(b["codes"], b["code_len"])
    qn = 3
    assert audio_in.shape[1] == last_step(6, qn) + 1
    for r in range(2):
        t = int(b["code_len"][r])
        one = apply_delay(b["codes"][r:r + 1, :, :t], m.bos_id, m.end_id, grid.shape[1])[0].T  # (S, Q)
        assert torch.equal(grid[r], one)
        for s in range(grid.shape[1]):
            for q in range(qn):
                f = s - q
                want = f >= 0 and (f < t or (q == 0 and f == t))
                assert bool(mask[r, s, q]) == want
        assert torch.equal(audio_in[r, 1:], grid[r, : audio_in.shape[1] - 1])
        assert (audio_in[:, 0] == m.bos_id).all()


@pytest.mark.parametrize("kind", ["independent", "cascaded"])
def test_kv_cache_matches_full_forward_with_per_row_positions(kind):
    m = tiny(kind)
    b = batch()
    audio_in, grid, _ = m.training_grid(b["codes"], b["code_len"])
    with torch.no_grad():
        h_full = m(b["text"], b["text_len"], audio_in)  # (B, S, D)
        caches = m.make_caches(2)
        lt = [5, 3]
        for r in range(2):  # prefill each row alone, at its own length
            m.forward_step(b["text"][r:r + 1, : lt[r]], torch.arange(lt[r])[None], caches, rows=torch.tensor([r]))
        s = audio_in.shape[1]
        # stale "rejected drafts" written past each row's end first; they must never become visible
        junk = torch.randint(0, m.n_tokens, (2, 4, 3))
        m.forward_step(junk, torch.tensor(lt)[:, None] + 2 + torch.arange(4), caches)
        hs, start = [], 0
        for w in (1, 3, 2, s):  # uneven chunks, rows at different absolute positions in one call
            w = min(w, s - start)
            if w <= 0:
                break
            pos = torch.tensor(lt)[:, None] + start + torch.arange(w)
            hs.append(m.forward_step(audio_in[:, start:start + w], pos, caches, kv_len=int(pos.max()) + 1))
            start += w
        h_inc = torch.cat(hs, 1)
        lg_full, lg_inc = m.logits(m.norm_f(h_full)), m.logits(m.norm_f(h_inc))
        for r in range(2):  # compare only real positions of each row
            n = last_step(int(b["code_len"][r]), 3) + 1
            assert torch.allclose(lg_full[r, :n], lg_inc[r, :n], atol=1e-4)
            hp_f, hp_i = h_full[r:r + 1, :n], h_inc[r:r + 1, :n]
            for k in range(m.cfg.mtp_heads):
                hp_f, a = m.head_step(k, hp_f, h_full[r:r + 1, :n], grid[r:r + 1, k:k + n])
                hp_i, c = m.head_step(k, hp_i, h_inc[r:r + 1, :n], grid[r:r + 1, k:k + n])
                assert torch.allclose(a, c, atol=1e-4)


def test_padding_does_not_change_a_row():
    """Left-aligned text: a row's logits do not depend on how much padding its batch adds."""
    m = tiny("cascaded")
    b = batch()
    audio_in, _, _ = m.training_grid(b["codes"], b["code_len"])
    with torch.no_grad():
        both = m(b["text"], b["text_len"], audio_in)[1]
        alone = m(b["text"][1:, :3], b["text_len"][1:], audio_in[1:])[0]
    assert torch.allclose(both, alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["independent", "cascaded"])
def test_compute_loss_metrics_and_weights(kind):
    m = tiny(kind, k=3, mtp_weights="geometric", mtp_decay=0.5)
    loss, met = m.compute_loss(batch())
    for k in range(1, 4):
        for name in ("loss_mtp", "acc_mtp", "accept_frame_mtp"):
            assert f"{name}{k}" in met
    want = met["loss_main"] + sum(0.5 ** (k - 1) * met[f"loss_mtp{k}"] for k in (1, 2, 3))
    assert math.isclose(loss.item(), want, rel_tol=1e-5)
    a = [met[f"accept_frame_mtp{k}"] for k in (1, 2, 3)]
    assert math.isclose(met["expected_accept_per_step"], 1 + a[0] + a[0] * a[1] + a[0] * a[1] * a[2], rel_tol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in m.mtp_parameters())
    # uniform logits: CE = log(n_tokens) exactly, a second way of computing the main loss
    torch.nn.init.zeros_(m.out.weight)
    _, met0 = m.compute_loss(batch())
    assert math.isclose(met0["loss_main"], math.log(m.n_tokens), rel_tol=1e-5)


def test_distill_loss_equals_hand_computed_soft_ce():
    m = tiny("independent", k=2)
    for p in m.heads.parameters():
        torch.nn.init.zeros_(p)  # heads == main head applied at the same position
    b = batch()
    loss, met = m.compute_loss(b, distill=True)
    audio_in, _, mask = m.training_grid(b["codes"], b["code_len"])
    with torch.no_grad():
        lg = m.logits(m.norm_f(m(b["text"], b["text_len"], audio_in))).float()  # (B, S, Q, n)
    s = lg.shape[1]
    for k in (1, 2):  # head k at input i is distilled from the main head at input i + k
        soft = lg[:, k:].softmax(-1)
        tok = -(soft * lg[:, : s - k].log_softmax(-1)).sum(-1)  # (B, S-k, Q)
        msk = mask[:, k: s].float()
        want = float((tok * msk).sum() / msk.sum())
        assert math.isclose(met[f"loss_mtp{k}"], want, rel_tol=1e-4)
    loss.backward()
    assert m.out.weight.grad is not None  # heads' loss reaches the shared projection; targets are detached


def test_mtp_parameters_and_num_params():
    m = tiny("cascaded", k=2)
    ids = {id(p) for p in m.mtp_parameters()}
    assert ids == {id(p) for n, p in m.named_parameters() if n.startswith("heads.")}
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    assert m.num_params(include_mtp=False) < m.num_params()


@pytest.mark.parametrize("kind", ["independent", "cascaded"])
def test_save_load_roundtrip_and_fresh_heads(tmp_path, kind):
    m = tiny(kind)
    b = batch()
    m.save_pretrained(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["mtp_kind"] == kind
    m2 = SpeechLM.from_pretrained(tmp_path / "ck")
    audio_in, grid, _ = m.training_grid(b["codes"], b["code_len"])
    with torch.no_grad():
        h1, h2 = m(b["text"], b["text_len"], audio_in), m2(b["text"], b["text_len"], audio_in)
        assert torch.equal(m.logits(m.norm_f(h1)), m2.logits(m2.norm_f(h2)))
        assert torch.equal(m.head_step(0, h1, h1, grid[:, :h1.shape[1]])[1], m2.head_step(0, h2, h2, grid[:, :h2.shape[1]])[1])
    other = "cascaded" if kind == "independent" else "independent"
    m3 = SpeechLM.from_pretrained(tmp_path / "ck", mtp_heads=4, mtp_kind=other)
    assert m3.cfg.mtp_heads == 4 and len(m3.heads) == 4
    s1, s3 = m.state_dict(), m3.state_dict()
    for k, v in s1.items():
        if not k.startswith("heads."):
            assert torch.equal(v, s3[k]), k


def test_checkpoint_errors(tmp_path):
    with pytest.raises(SpeechMTPError, match="not found"):
        SpeechLM.from_pretrained(tmp_path / "nope")
    m = tiny()
    m.save_pretrained(tmp_path / "ck")
    with pytest.raises(SpeechMTPError, match="does not fit"):
        SpeechLM.from_pretrained(tmp_path / "ck", d_model=64, n_heads=2)
    with pytest.raises(SpeechMTPError, match="unknown"):
        SpeechLM.from_pretrained(tmp_path / "ck", bogus=1)
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpeechMTPError, match="corrupt"):
        SpeechLM.from_pretrained(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{")
    with pytest.raises(SpeechMTPError, match="JSON"):
        SpeechLM.from_pretrained(tmp_path / "ck")
    with pytest.raises(SpeechMTPError, match="mtp_kind"):
        SpeechLM(ModelConfig(mtp_kind="tree"))


def test_wrong_codes_shape_is_a_user_error():
    m = tiny()
    b = batch(q=2)
    with pytest.raises(SpeechMTPError, match="codec"):
        m.compute_loss(b)


def test_filters_match_naive_definitions():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    for k in (1, 3, 10):
        naive = logits.clone()
        for r in range(4):
            keep = logits[r].topk(k).indices
            drop = torch.ones(10, dtype=torch.bool)
            drop[keep] = False
            naive[r, drop] = -math.inf
        assert torch.equal(filter_logits(logits, 1.0, k, 1.0).isinf(), naive.isinf())
    for p in (0.1, 0.5, 0.9):
        f = filter_logits(logits, 1.0, 0, p)
        for r in range(4):
            probs, order = logits[r].softmax(-1).sort(descending=True)
            n_keep = int((probs.cumsum(0) < p).sum()) + 1  # smallest prefix whose mass reaches p
            assert set(order[:n_keep].tolist()) == set((~f[r].isinf()).nonzero().flatten().tolist())
    # off means off: top_p = 1 never drops a token, however small (float rounding of the cumulative sum)
    tiny_tail = torch.tensor([30.0, 0.0, -40.0, -60.0])
    assert not filter_logits(tiny_tail, 1.0, 0, 1.0).isinf().any()
    # per-row parameters equal row-by-row calls
    t, kk, pp = torch.tensor([0.5, 1.0, 2.0, 1.0]), torch.tensor([0, 2, 5, 1]), torch.tensor([1.0, 0.9, 0.5, 1.0])
    rows = torch.stack([probs_from_logits(logits[r], float(t[r]), int(kk[r]), float(pp[r])) for r in range(4)])
    assert torch.allclose(probs_from_logits(logits, t, kk, pp), rows)


def test_inverse_cdf_sampling_matches_probs():
    p = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3])
    g = torch.Generator().manual_seed(0)
    x = sample_from_probs(p.expand(20000, 5), torch.rand(20000, generator=g))
    freq = torch.bincount(x, minlength=5).float() / 20000
    assert freq[0] == 0 and freq[2] == 0
    assert torch.allclose(freq, p, atol=0.015)
    assert int(sample_from_probs(p, torch.tensor(0.0))) == 1  # u = 0 never lands on a zero-probability entry


def test_inference_fast_paths_equal_the_plain_ops():
    """The no-grad fast paths (rope tables, fused RMSNorm, transposed Linear, stacked heads, slice-written
    cache) compute what the plain formulations compute."""
    from speechmtp.model import RMSNorm, rope, rope_tables

    torch.manual_seed(0)
    x, pos = torch.randn(2, 5, 3, 8), torch.randint(0, 60, (2, 5))
    inv = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    ang = (pos.float()[..., None] * inv)[:, :, None]  # the pairwise definition, from scratch
    x1, x2 = x[..., 0::2], x[..., 1::2]
    want = torch.stack((x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()), -1).flatten(-2)
    cos, sin = rope_tables(64, 8, 10000.0)
    assert torch.allclose(rope(x, cos[pos][:, :, None], sin[pos][:, :, None]), want, atol=1e-6)
    norm = RMSNorm(8)
    torch.nn.init.normal_(norm.weight)
    with torch.no_grad():
        fast = norm(x)
    assert torch.equal(fast, norm(x).detach())  # grad-enabled call takes the plain formula

    m = tiny(k=3)
    n = torch.randn(2, 4, 32)
    with torch.no_grad():
        lin = m.blocks[0].ff1
        assert torch.allclose(lin(n), torch.nn.functional.linear(n, lin.weight), atol=1e-6)
        lin.weight.mul_(2)  # the cached transposed copy follows in-place updates
        assert torch.allclose(lin(n), torch.nn.functional.linear(n, lin.weight), atol=1e-6)
        both = m.heads_logits(m.norm_f(n), 2)  # (2, 4, 1 + 2, Q, n_tokens) from the normed trunk hidden
        assert torch.allclose(both[:, :, 0], m.logits(m.norm_f(n)), atol=1e-5)
        for k in range(2):
            assert torch.allclose(both[:, :, k + 1], m.head_step(k, n, n, None)[1], atol=1e-5)
        # a cache written by slice at a shared start equals one written by per-row positions
        tok = torch.randint(0, m.n_tokens, (2, 3, 3))
        pos = 7 + torch.arange(3).expand(2, 3)
        ca, cb = m.make_caches(2), m.make_caches(2)
        for c in (ca, cb):
            m.forward_step(torch.tensor([[1, 5, 6, 7, 2, 9, 9], [1, 8, 2, 4, 4, 4, 4]]), torch.arange(7).expand(2, 7), c)
        ha = m.forward_step(tok, pos, ca, kv_len=10)
        hb = m.forward_step(tok, pos, cb, start=7)
        assert torch.allclose(ha, hb, atol=1e-6)
        h1a = m.forward_step(tok[:, :1], pos[:, :1] + 3, ca, kv_len=11)  # one query: no mask at all
        h1b = m.forward_step(tok[:, :1], pos[:, :1] + 3, cb, start=10)
        assert torch.allclose(h1a, h1b, atol=1e-6)
