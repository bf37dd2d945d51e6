"""Pure sampling functions: filtering, inverse-CDF sampling and the speculative acceptance rule.

Parameters may be Python numbers or tensors that broadcast against the logits' leading dims (one
value per row in a batch). Sampling takes uniforms as input so callers control the random stream
(one torch.Generator per session) and no value leaves the device.
"""
from __future__ import annotations

import math

import torch


def _bcast(x, like: torch.Tensor) -> torch.Tensor:
    """A number or a (B,) tensor -> shaped to broadcast against like (B, ..., V)."""
    if not isinstance(x, torch.Tensor):
        return torch.tensor(x, device=like.device)
    return x.to(like.device).reshape(x.shape + (1,) * (like.dim() - x.dim()))


def filter_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """Temperature, then top-k (0 = off), then top-p (1 = off); removed entries become -inf."""
    t = _bcast(temperature, logits).to(logits.dtype)
    logits = logits / t.clamp(min=1e-6)
    v = logits.shape[-1]
    srt, order = logits.sort(-1, descending=True)
    k = _bcast(top_k, logits).long()
    k = torch.where(k > 0, k.clamp(max=v), torch.full_like(k, v))
    kth = srt.gather(-1, (k - 1).expand(srt.shape[:-1] + (1,)))
    logits = logits.masked_fill(logits < kth, -math.inf)
    p = _bcast(top_p, logits).to(logits.dtype)
    probs = srt.masked_fill(srt < kth, -math.inf).softmax(-1)
    # keep the smallest prefix reaching top_p (always the first); top_p >= 1 is off, not subject to rounding
    drop_sorted = ((probs.cumsum(-1) - probs) >= p) & (p < 1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def probs_from_logits(logits: torch.Tensor, temperature=1.0, top_k=0, top_p=1.0) -> torch.Tensor:
    """The distribution plain sampling draws from (and the one speculative sampling must reproduce)."""
    return filter_logits(logits, temperature, top_k, top_p).softmax(-1)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: probs (..., V) (need not sum to 1), u (...) in [0, 1) -> index (...). Zero-probability
    entries are never chosen."""
    cdf = probs.cumsum(-1)
    r = (u.to(probs.dtype) * cdf[..., -1])[..., None]
    return (cdf <= r).sum(-1).clamp(max=probs.shape[-1] - 1)


def multinomial(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device)
    return sample_from_probs(probs, u)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalise(max(p - q, 0)); falls back to p where p <= q everywhere (then rejection had probability 0)."""
    r = (p - q).clamp(min=0)
    s = r.sum(-1, keepdim=True)
    return torch.where(s > 1e-12, r / s.clamp(min=1e-30), p)


def speculative_accept(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Accept draft token x (...) drawn from q with probability min(1, p(x) / q(x)). p, q (..., V)."""
    px = p.gather(-1, x[..., None])[..., 0]
    qx = q.gather(-1, x[..., None])[..., 0]
    return u.to(p.dtype) * qx < px


def relaxed_accept(p: torch.Tensor, x: torch.Tensor, top_k, min_prob) -> torch.Tensor:
    """LOSSY: accept x if it is among p's top_k (0 = no rank limit) and p(x) >= min_prob."""
    px = p.gather(-1, x[..., None])[..., 0]
    rank = (p > px[..., None]).sum(-1)
    k = _bcast(top_k, px).long()
    ok_rank = (k <= 0) | (rank < k)
    return ok_rank & (px >= _bcast(min_prob, px).to(p.dtype))
