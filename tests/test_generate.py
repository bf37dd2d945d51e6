"""Decoding: mtp greedy == ntp greedy exactly, generate == reference, adaptive, relaxed, BatchDecoder."""
import copy

import pytest
import torch

from speechmtp.bench.decode import train_synthetic_model
from speechmtp.generate import BatchDecoder, GenerationConfig, allowed_tokens, generate, ntp_reference
from speechmtp.model import ModelConfig, SpeechLM
from speechmtp.sampling import relaxed_accept
from speechmtp.utils import SpeechMTPError

PROMPTS = [[1, 5, 6, 7, 2], [1, 20, 9, 30, 11, 12, 2], [1, 40, 2]]


def random_model(kind, k, seed, q=2, v=8):
    torch.manual_seed(seed)
    m = SpeechLM(ModelConfig(n_codebooks=q, codebook_size=v, d_model=32, n_layers=2, n_heads=2, max_seq_len=96,
                             mtp_heads=k, mtp_kind=kind))
    for p in m.heads.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        m.out.weight.mul_(20)  # peaky enough that outputs are not all END at step 0
    return m.double().eval()  # float64: exact-equality tests must not hinge on float32 near-ties


@pytest.fixture(scope="module", params=["independent", "cascaded"])
def trained(request):
    cfg = ModelConfig(n_codebooks=2, codebook_size=8, d_model=32, n_layers=2, n_heads=2, max_seq_len=96,
                      mtp_heads=4, mtp_kind=request.param)
    return train_synthetic_model(cfg, steps=30, batch=8, length=16).double()


def codes_of(model, prompt, **kw):
    g = generate(model, prompt, GenerationConfig(**kw))
    return g.codes(), g.stats


@pytest.mark.parametrize("kind", ["independent", "cascaded"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_mtp_greedy_equals_ntp_greedy_random_models(kind, k):
    for seed in (0, 1):
        m = random_model(kind, k, seed)
        for prompt in PROMPTS[:2]:
            ref = ntp_reference(m, prompt, GenerationConfig(mode="ntp", max_frames=24))
            assert torch.equal(codes_of(m, prompt, mode="ntp", max_frames=24)[0], ref)
            out, st = codes_of(m, prompt, mode="mtp", max_frames=24)
            assert torch.equal(out, ref)
            assert st.frames == ref.shape[1] and sum(st.accepted_hist) == st.forward_passes


def test_mtp_greedy_equals_ntp_greedy_trained_and_accepts(trained):
    best = 0.0
    for prompt in PROMPTS:
        ref = ntp_reference(trained, prompt, GenerationConfig(mode="ntp", max_frames=40))
        for k in (1, 2, 4):
            out, st = codes_of(trained, prompt, mode="mtp", max_frames=40, draft_depth=k)
            assert torch.equal(out, ref), (prompt, k)
            best = max(best, st.accepted_per_step)
            assert len(st.depth_acceptance) == k
    assert best > 1.5  # the accept path really ran


def test_generate_ntp_sampling_equals_reference():
    m = random_model("independent", 2, 3)
    for seed, filt in ((0, dict(top_k=5, top_p=0.9)), (1, dict(top_k=5, top_p=0.9)), (2, {}), (3, dict(top_p=0.7))):
        kw = dict(mode="ntp", temperature=1.0, max_frames=20, seed=seed, **filt)
        assert torch.equal(codes_of(m, PROMPTS[0], **kw)[0], ntp_reference(m, PROMPTS[0], GenerationConfig(**kw)))


def test_adaptive_depth_never_changes_greedy(trained):
    for prompt in PROMPTS[:2]:
        ref, st_full = codes_of(trained, prompt, mode="mtp", max_frames=40)
        for thr in (0.6, 0.999):
            out, st = codes_of(trained, prompt, mode="mtp", max_frames=40, adaptive=True, adaptive_threshold=thr)
            assert torch.equal(out, ref)
            assert sum(st.depth_tried) <= sum(st_full.depth_tried)


def test_relaxed_accepts_at_least_as_much(trained):
    # per draft, the relaxed rule is a superset of exact match: the argmax is always within top-k
    p = torch.randn(50, 2, 10).softmax(-1)
    assert relaxed_accept(p, p.argmax(-1), 3, 0.0).all()
    tot = {"mtp": [0, 0], "mtp-relaxed": [0, 0]}
    for prompt in PROMPTS:
        for mode in tot:
            out, st = codes_of(trained, prompt, mode=mode, max_frames=40, relaxed_top_k=3)
            tot[mode][0] += sum(st.depth_accepted)
            tot[mode][1] += sum(st.depth_tried)
            assert out.shape[0] == 2 and (out >= 0).all() and (out < 8).all()
    rate = {k: a / max(t, 1) for k, (a, t) in tot.items()}
    assert rate["mtp-relaxed"] >= rate["mtp"], rate
    out, _ = codes_of(trained, PROMPTS[0], mode="mtp-relaxed", temperature=0.8, max_frames=30, seed=1)
    assert (out < 8).all()


def test_batch_decoder_slot_equals_generate():
    m = random_model("cascaded", 3, 5)
    cfgs = [GenerationConfig(mode="mtp", max_frames=20),
            GenerationConfig(mode="mtp", temperature=1.0, top_k=4, max_frames=20, seed=7),
            GenerationConfig(mode="ntp", temperature=0.7, max_frames=20, seed=3),
            GenerationConfig(mode="mtp", draft_depth=2, adaptive=True, temperature=0.9, max_frames=20, seed=11),
            GenerationConfig(mode="mtp-relaxed", max_frames=20)]
    want = [codes_of(m, PROMPTS[i % 3], **vars(c))[0] for i, c in enumerate(cfgs)]
    dec = BatchDecoder(m, max_batch=4)
    got: dict[int, list] = {}
    order = {}
    pending = list(range(len(cfgs)))
    # start two, join the rest later (one after a removal frees a row): rows at different positions
    for i in pending[:2]:
        order[dec.add(PROMPTS[i % 3], cfgs[i])] = i
    pending = pending[2:]
    results = {}
    steps = 0
    while order or pending:
        if steps in (2, 3) and pending:
            i = pending.pop(0)
            order[dec.add(PROMPTS[i % 3], cfgs[i])] = i
        for slot, chunk in dec.step().items():
            got.setdefault(order[slot], []).append(chunk)
        for slot in [s for s in order if dec.done(s)]:
            i = order.pop(slot)
            results[i] = torch.cat(got.get(i, [torch.zeros(2, 0, dtype=torch.long)]), 1)
            assert dec.stats(slot).frames == results[i].shape[1]
            dec.remove(slot)
            if pending:
                j = pending.pop(0)
                order[dec.add(PROMPTS[j % 3], cfgs[j])] = j
        steps += 1
    for i in range(len(cfgs)):
        assert torch.equal(results[i], want[i]), i


def test_chunks_stream_in_order():
    m = random_model("independent", 2, 1, q=3)
    g = generate(m, PROMPTS[1], GenerationConfig(mode="mtp", max_frames=30))
    chunks = list(g)
    ref = ntp_reference(m, PROMPTS[1], GenerationConfig(mode="ntp", max_frames=30))
    assert torch.equal(torch.cat(chunks, 1) if chunks else ref[:, :0], ref)
    assert all(c.shape[0] == 3 and c.shape[1] > 0 for c in chunks)
    assert g.stats.wall_time > 0


def test_allowed_tokens_grammar():
    ok = allowed_tokens(torch.tensor([0, 5, 7]), torch.tensor([1 << 40, 1 << 40, 6]), 3, 4, torch.tensor(100))
    end, bos = 4, 5
    assert ok[0, 1].nonzero().flatten().tolist() == [bos] and ok[0, 0, :5].all()  # start: delayed slots are BOS
    assert ok[1, 1, :4].all() and not ok[1, 1, end] and ok[1, 0, end]  # only codebook 0 may end
    # codebook 0 ended at step 6; at step 7 codebook 1 (frame 6) is past the end, codebook 2 still owes frame 5
    assert ok[2, 0].nonzero().flatten().tolist() == [end] and ok[2, 1].nonzero().flatten().tolist() == [end]
    assert ok[2, 2, :4].all() and not ok[2, 2, end]
    forced = allowed_tokens(torch.tensor(3), torch.tensor(1 << 40), 2, 4, torch.tensor(3))
    assert forced[0].nonzero().flatten().tolist() == [end]  # max_frames forces the end


def test_config_errors():
    m = random_model("independent", 2, 0)
    with pytest.raises(SpeechMTPError, match="draft_depth"):
        generate(m, PROMPTS[0], GenerationConfig(mode="mtp", draft_depth=3))
    with pytest.raises(SpeechMTPError, match="mode"):
        generate(m, PROMPTS[0], GenerationConfig(mode="beam"))
    m0 = random_model("independent", 0, 0)
    with pytest.raises(SpeechMTPError, match="no.*heads|has none"):
        generate(m0, PROMPTS[0], GenerationConfig(mode="mtp"))
    with pytest.raises(SpeechMTPError, match="text"):
        generate(m, [], GenerationConfig())
    with pytest.raises(SpeechMTPError, match="max_seq_len"):
        generate(m, [1] + [5] * 200 + [2], GenerationConfig())
    dec = BatchDecoder(m, 1)
    dec.add(PROMPTS[0])
    with pytest.raises(SpeechMTPError, match="busy"):
        dec.add(PROMPTS[0])


def test_decode_bench_runs_on_a_checkpoint(tmp_path, trained):
    from speechmtp.bench.decode import run_decode_bench

    copy.deepcopy(trained).float().save_pretrained(tmp_path / "ck")  # the fixture stays float64
    res = run_decode_bench(str(tmp_path / "ck"), ["hi there.", "a b c."], device="cpu", max_frames=12,
                           frame_rate=75.0, reference=False)
    assert res["greedy_identical"] is True
    for key in ("speedup_mtp", "speedup_mtp_relaxed", "accepted_per_step", "machine", "step_latency_ms"):
        assert key in res
    g = res["greedy"]
    assert g["ntp"]["accepted_per_step"] == 1.0 and g["mtp"]["forward_passes"] <= g["ntp"]["forward_passes"]


@pytest.mark.parametrize("kind", ["independent", "cascaded"])
def test_drafts_equal_head_by_head_definition(kind):
    """After every step the stored drafts are what drafting head by head gives: head k reads the hidden at the
    last emitted step and sees the END of codebook 0 emitted or drafted before it (`allowed_tokens`).
    A small max_frames forces END inside the draft window; a larger one lets the heads draft END themselves."""
    from speechmtp.generate import INF

    for seed, mf in ((0, 7), (1, 7), (2, 40), (3, 40)):
        m = random_model(kind, 4, seed, q=3)
        dec = BatchDecoder(m, max_batch=1)
        slot = dec.add(PROMPTS[0], GenerationConfig(mode="mtp", max_frames=mf))
        text = torch.tensor(PROMPTS[0])
        while not dec.done(slot):
            dec.step()
            s = dec.slots[slot]
            if s.finished:
                break
            steps = torch.tensor([[m.bos_id] * 3] + s.grid[: s.e - 1])[None]  # inputs up to the last emitted step
            with torch.no_grad():
                h = m(text[None], torch.tensor([text.numel()]), steps)[:, -1]  # (1, D)
                h_prev, tok, end = h, torch.tensor([s.grid[s.e - 1]]), s.end
                for k in range(4):
                    h_prev, lg = m.head_step(k, h_prev, h, tok)
                    ok = allowed_tokens(torch.tensor([s.e + k]), torch.tensor([end]), 3, 8, torch.tensor(s.max_frames))
                    tok = lg.masked_fill(~ok, float("-inf")).argmax(-1)  # (1, Q)
                    if end == INF and int(tok[0, 0]) == m.end_id:
                        end = s.e + k
                    assert torch.equal(dec.drafts[slot, k], tok[0]), (seed, s.e, k)
