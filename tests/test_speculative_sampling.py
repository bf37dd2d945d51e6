"""Speculative sampling is lossless: mtp sampling draws the same distribution as ntp sampling.

A tiny model with a tiny vocabulary, thousands of seeded sessions stepped as one batch, and a
G-test of homogeneity on the joint of the first frames. The same test must reject deliberately
wrong acceptance rules, so it is known to have power.
"""
import math
from collections import Counter

import pytest
import torch

from speechmtp.generate import BatchDecoder, GenerationConfig
from speechmtp.model import ModelConfig, SpeechLM
from speechmtp.sampling import residual, speculative_accept

N = 2000
SCALE = 15


def peaky_model(q, v, k, kind, seed=0):
    torch.manual_seed(seed)
    m = SpeechLM(ModelConfig(n_codebooks=q, codebook_size=v, d_model=16, n_layers=1, n_heads=2, max_seq_len=16,
                             mtp_heads=k, mtp_kind=kind))
    with torch.no_grad():
        m.out.weight.mul_(SCALE)  # distributions far from uniform ...
        for p in m.heads.parameters():
            torch.nn.init.normal_(p, std=0.5)  # ... and heads that disagree with the main head often
    return m.eval()


def sample_many(model, cfg: GenerationConfig, seed0: int, n: int = N) -> Counter:
    """n sessions with seeds seed0 .. seed0+n-1 in one BatchDecoder -> Counter of full outputs."""
    dec = BatchDecoder(model, max_batch=n)
    slots = [dec.add([1, 7, 8, 2], GenerationConfig(**{**vars(cfg), "seed": seed0 + i})) for i in range(n)]
    got = {s: [] for s in slots}
    while dec.active():
        for s, c in dec.step().items():
            got[s].append(c)
    return Counter(tuple(torch.cat(c, 1).flatten().tolist()) if c else () for c in got.values())


def g_test_pvalue(a: Counter, b: Counter) -> float:
    """Two-sample G-test of homogeneity; sparse cells (expected < 5) pooled into one."""
    keys = sorted(set(a) | set(b))
    na, nb = sum(a.values()), sum(b.values())
    rows, pool = [], [0, 0]
    for k in keys:
        if (a[k] + b[k]) * min(na, nb) / (na + nb) < 5:
            pool[0] += a[k]
            pool[1] += b[k]
        else:
            rows.append((a[k], b[k]))
    if sum(pool):
        rows.append(tuple(pool))
    g = 0.0
    for x, y in rows:
        tot = x + y
        for obs, n in ((x, na), (y, nb)):
            exp = tot * n / (na + nb)
            if obs:
                g += 2 * obs * math.log(obs / exp)
    df = max(len(rows) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(g / 2, dtype=torch.float64)))


CASES = [  # (Q, V, K, kind, sampling settings, max_frames)
    (1, 3, 3, "independent", dict(temperature=1.0), 3),
    (2, 3, 2, "cascaded", dict(temperature=0.8, top_k=2), 2),
]


@pytest.fixture(autouse=True)
def restore_rules():
    yield
    BatchDecoder.accept_fn = staticmethod(speculative_accept)
    BatchDecoder.residual_fn = staticmethod(residual)


@pytest.mark.parametrize("q,v,k,kind,samp,mf", CASES)
def test_mtp_sampling_matches_ntp_and_wrong_rules_fail(q, v, k, kind, samp, mf):
    model = peaky_model(q, v, k, kind)
    ntp = sample_many(model, GenerationConfig(mode="ntp", max_frames=mf, **samp), seed0=0)
    mtp = sample_many(model, GenerationConfig(mode="mtp", max_frames=mf, **samp), seed0=10 ** 6)
    assert len(ntp) >= 5  # the outputs really vary
    p_ok = g_test_pvalue(ntp, mtp)
    assert p_ok > 1e-3, (p_ok, ntp.most_common(6), mtp.most_common(6))

    # wrong rule 1: accept every draft (the drafts' distribution leaks into the output)
    BatchDecoder.accept_fn = staticmethod(lambda p, q_, x, u: torch.ones_like(x, dtype=torch.bool))
    bad = sample_many(model, GenerationConfig(mode="mtp", max_frames=mf, **samp), seed0=2 * 10 ** 6)
    assert g_test_pvalue(ntp, bad) < 1e-6

    # wrong rule 2: correct test, but a rejected token is resampled from p instead of max(p - q, 0)
    BatchDecoder.accept_fn = staticmethod(speculative_accept)
    BatchDecoder.residual_fn = staticmethod(lambda p, q_: p)
    bad2 = sample_many(model, GenerationConfig(mode="mtp", max_frames=mf, **samp), seed0=3 * 10 ** 6)
    assert g_test_pvalue(ntp, bad2) < 1e-4


def test_acceptance_path_is_exercised():
    model = peaky_model(1, 3, 3, "independent")
    dec = BatchDecoder(model, max_batch=200)
    slots = [dec.add([1, 7, 8, 2], GenerationConfig(mode="mtp", temperature=1.0, max_frames=3, seed=i)) for i in range(200)]
    while dec.active():
        dec.step()
    tried = sum(sum(dec.stats(s).depth_tried) for s in slots)
    acc = sum(sum(dec.stats(s).depth_accepted) for s in slots)
    assert tried > 0 and 0 < acc < tried  # both accept and reject happen


def test_speculative_accept_rule_exact_probabilities():
    """Per token: P(accept x) = min(1, p(x)/q(x)) and accepted-or-resampled ~ p, computed two ways."""
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.1, 0.6, 0.2, 0.1])
    # exact output law: q(x) min(1, p/q) + (1 - sum_x q min(1,p/q)) * residual
    acc = (q * torch.minimum(torch.ones(4), p / q)).sum()
    law = q * torch.minimum(torch.ones(4), p / q) + (1 - acc) * residual(p, q)
    assert torch.allclose(law, p, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    n = 200000
    from speechmtp.sampling import sample_from_probs
    x = sample_from_probs(q.expand(n, 4), torch.rand(n, generator=g))
    ok = speculative_accept(p.expand(n, 4), q.expand(n, 4), x, torch.rand(n, generator=g))
    y = torch.where(ok, x, sample_from_probs(residual(p, q).expand(n, 4), torch.rand(n, generator=g)))
    assert torch.allclose(torch.bincount(y, minlength=4).float() / n, p, atol=0.005)
