"""SpeechLM: a decoder-only transformer over [text tokens | codec steps] with multi-token-prediction heads.

Layout and conventions (everything else in the package relies on these):

* Audio is a grid of *steps* made from codec frames with the delay pattern: codebook q lags q steps,
  so step s holds codes[q, s - q]. Each step is one position of the sequence; its input embedding is
  the sum of its Q codebook embeddings, and one (Q * n_tokens) projection predicts all Q codebooks.
* Token ids per codebook: codes 0..V-1, END = V, BOS = V + 1 (n_tokens = V + 2). BOS fills the
  delayed slots before the start (codebook q at steps s < q); END fills codebook q at steps s >= T + q.
* End of speech: codebook 0 emits END at step T (T = number of frames). The Q - 1 delayed codebooks still
  owe their last codes, so decoding runs to step `last_step(T, Q) = T + max(0, Q - 2)` and stops.
  Only codebook 0's END is learned; every other BOS/END is *forced* (see `generate.allowed_tokens`).
* Input step 0 is an all-BOS step placed right after the text; input step s >= 1 holds grid step s - 1.
  The main head at input step s predicts grid step s; MTP head k (1..K) predicts grid step s + k
  ("frame t+2 .. t+K+1" seen from the step t held at input s).
* Positions are explicit per row (B, L) everywhere: training left-pads the text so rows of different
  lengths share one tensor, and the KV cache lets rows at different positions step together.

MTP head families (config.mtp_kind):
* "independent" (Medusa / Gloeckle): head k = residual SiLU block on the trunk's normed final hidden,
  then the shared output projection. Zero-initialised, so a fresh head starts equal to the main head.
* "cascaded" (DeepSeek-V3 style): module k mixes module k-1's hidden (module 0 = trunk) with the embedding
  of the step module k-1 predicted (teacher-forced in training, the draft at inference) by
  norm + concat + linear, then runs one transformer block and the shared output projection.
  The block's attention is restricted to the current position (equivalently: value/out projection),
  which keeps training and inference identical without a per-module KV cache for drafts.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .text import TEXT_VOCAB_SIZE
from .utils import SpeechMTPError, load_config, load_safetensors, save_config, save_safetensors


@dataclass
class ModelConfig:
    text_vocab_size: int = TEXT_VOCAB_SIZE
    n_codebooks: int = 8
    codebook_size: int = 1024
    d_model: int = 384
    n_layers: int = 8
    n_heads: int = 6
    ff_mult: int = 4
    max_seq_len: int = 2048
    mtp_heads: int = 4
    mtp_kind: str = "independent"  # "independent" | "cascaded"
    mtp_weights: str = "geometric"  # "constant" | "linear" | "geometric"
    mtp_decay: float = 0.8
    dropout: float = 0.0
    rope_base: float = 10000.0
    codec: str = "default"

    def validate(self) -> None:
        if self.mtp_kind not in ("independent", "cascaded"):
            raise SpeechMTPError(f"mtp_kind must be 'independent' or 'cascaded', got {self.mtp_kind!r}")
        if self.mtp_weights not in ("constant", "linear", "geometric"):
            raise SpeechMTPError(f"mtp_weights must be 'constant', 'linear' or 'geometric', got {self.mtp_weights!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise SpeechMTPError(f"d_model {self.d_model} must split into n_heads {self.n_heads} heads of even size")
        if self.mtp_heads < 0 or self.n_codebooks < 1 or self.codebook_size < 2:
            raise SpeechMTPError("mtp_heads must be >= 0, n_codebooks >= 1 and codebook_size >= 2")


# ---- the delay pattern, as data ----------------------------------------------------------------------
def delay_offsets(n_codebooks: int) -> torch.Tensor:
    """Codebook q lags q steps. The one place the pattern is defined."""
    return torch.arange(n_codebooks)


def last_step(n_frames: int, n_codebooks: int) -> int:
    """Index of the final grid step to decode when codebook 0 ends at step `n_frames`."""
    return n_frames + max(0, n_codebooks - 2)


def apply_delay(codes: torch.Tensor, bos: int, end: int, n_steps: int | None = None) -> torch.Tensor:
    """codes (B, Q, T) -> steps (B, Q, S): steps[:, q, s] = codes[:, q, s - q], BOS before, END after."""
    b, q, t = codes.shape
    off = delay_offsets(q).to(codes.device)
    n_steps = t + q if n_steps is None else n_steps
    s = torch.arange(n_steps, device=codes.device)
    src = s[None, :] - off[:, None]  # (Q, S) frame index read by each step
    out = codes.gather(2, src.clamp(0, max(t - 1, 0)).expand(b, q, n_steps)) if t else codes.new_zeros(b, q, n_steps)
    out = torch.where(src[None] < 0, torch.full_like(out, bos), out)
    return torch.where(src[None] >= t, torch.full_like(out, end), out)


def undo_delay(steps: torch.Tensor, n_frames: int, start: int = 0) -> torch.Tensor:
    """steps (B, Q, S) -> frames (B, Q, n_frames - start): frames[:, q, t] = steps[:, q, t + q]."""
    b, q, _ = steps.shape
    off = delay_offsets(q).to(steps.device)
    t = torch.arange(start, n_frames, device=steps.device)
    idx = (t[None, :] + off[:, None]).expand(b, q, -1)  # (B, Q, n)
    return steps.gather(2, idx)


# ---- layers ------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if torch.is_grad_enabled() or x.dtype not in (torch.float32, torch.float64):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        # inference: the same ops in one call, bit-identical in float32/64 (half types would be upcast)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Linear(nn.Linear):
    """Bias-free nn.Linear (same parameters, same state dict) that, on a CPU with autograd off, multiplies
    by a cached (in, out) copy of its weight: MKL runs the few-row matmuls of a decode step up to 2x faster
    in that layout. The copy is rebuilt whenever the weight changes (in place or replaced)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(d_in, d_out, bias=False)
        self._wt: tuple | None = None

    def forward(self, x):
        w = self.weight
        if torch.is_grad_enabled() or w.device.type != "cpu":
            return F.linear(x, w)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._wt is None or self._wt[0] != key:
            self._wt = (key, w.detach().t().contiguous())
        return x @ self._wt[1]


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for positions 0..length-1 -> (cos, sin), each (length, head_dim) in the pair-interleaved
    layout of `rope`: cos repeated per pair, sin as (-sin, +sin). Built once; a forward only indexes them."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.arange(length, dtype=torch.float32)[:, None] * inv  # (length, hd/2)
    cos, sin = ang.cos(), ang.sin()
    return cos.repeat_interleave(2, -1), torch.stack((-sin, sin), -1).flatten(-2)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., hd) rotated pairwise: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), with cos/sin from
    `rope_tables` broadcast against x. Written as x * cos + swap(x) * sin: four kernels instead of ten,
    and bit-identical to the pairwise form (a + (-b) == a - b and addition commutes in IEEE)."""
    return x * cos + x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin


class KVCache(nn.Module):
    """Preallocated, position-indexed (gpt-fast style): slot i of a row holds the key at position i.

    No rollback is needed for rejected drafts: a query only sees keys at positions <= its own, and
    every position up to it has been (re)written with accepted content before that query runs.
    """

    def __init__(self, batch: int, n_heads: int, length: int, head_dim: int, device=None, dtype=torch.float32):
        super().__init__()
        shape = (batch, n_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None, kv_len: int,
               start: int | None = None):
        """Write k/v (B, H, L, hd) at pos (B, L) of `rows` (None = the first B rows); return keys/values up to kv_len.
        start (host int): every row's positions are start .. start+L-1, so the write is one slice copy."""
        b, l = k.shape[0], k.shape[2]
        if rows is None and start is not None:
            self.k[:b, :, start:start + l] = k
            self.v[:b, :, start:start + l] = v
            return self.k[:b, :, :kv_len], self.v[:b, :, :kv_len]
        r = torch.arange(b, device=k.device) if rows is None else rows
        # advanced indices (B,1),(B,L) around a slice put (B, L) first: (B, L, H, hd)
        self.k[r[:, None], :, pos] = k.transpose(1, 2)
        self.v[r[:, None], :, pos] = v.transpose(1, 2)
        if rows is None:
            return self.k[:b, :, :kv_len], self.v[:b, :, :kv_len]
        return self.k[rows, :, :kv_len], self.v[rows, :, :kv_len]


class Block(nn.Module):
    """Pre-norm transformer block. `local=True` restricts attention to the query's own position."""

    def __init__(self, cfg: ModelConfig, local: bool = False):
        super().__init__()
        d, self.n_heads, self.local, self.base = cfg.d_model, cfg.n_heads, local, cfg.rope_base
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        if local:  # softmax over a single key is 1: attention reduces to out(value(x))
            self.wv = Linear(d, d)
        else:
            self.wqkv = Linear(d, 3 * d)
        self.wo = Linear(d, d)
        self.ff1 = Linear(d, cfg.ff_mult * d)
        self.ff2 = Linear(cfg.ff_mult * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def attn(self, x, rot, mask, cache, rows, kv_len, start):
        if self.local:
            return self.wo(self.wv(x))
        b, l, d = x.shape
        qkv = self.wqkv(x).view(b, l, 3, self.n_heads, d // self.n_heads)  # (B, L, 3, H, hd)
        pos, cos, sin = rot  # positions (B, L) and their rotary tables (B, L, 1, 1, hd)
        qk = rope(qkv[:, :, :2], cos, sin)  # q and k rotated together: (B, L, 2, H, hd)
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)  # (B, H, L, hd)
        if cache is not None:
            k, v = cache.update(pos, k, v, rows, kv_len, start)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd)
        return self.wo(y.transpose(1, 2).reshape(b, l, d))

    def forward(self, x, pos=None, mask=None, cache=None, rows=None, kv_len=None, start=None):
        a = self.attn(self.norm1(x), pos, mask, cache, rows, kv_len, start)
        x = x + (self.drop(a) if self.training else a)  # eval: skip even the no-op dropout call
        f = self.ff2(F.silu(self.ff1(self.norm2(x))))
        return x + (self.drop(f) if self.training else f)


class IndependentHead(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.lin = Linear(d, d)
        nn.init.zeros_(self.lin.weight)  # starts as a copy of the main head

    def forward(self, n):
        return n + F.silu(self.lin(n))


class CascadedModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_h, self.norm_e, self.norm_out = RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.proj = Linear(2 * d, d)
        self.block = Block(cfg, local=True)

    def forward(self, h_prev, emb):
        h = self.block(self.proj(torch.cat([self.norm_h(h_prev), self.norm_e(emb)], dim=-1)))
        return h, self.norm_out(h)


# ---- the model ---------------------------------------------------------------------------------------
class SpeechLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        q, v, d = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        self.end_id, self.bos_id, self.n_tokens = v, v + 1, v + 2
        self.text_emb = nn.Embedding(cfg.text_vocab_size, d)
        self.audio_emb = nn.Embedding(q * self.n_tokens, d)  # codebook q uses rows q*n_tokens ...
        self.register_buffer("cb_offset", torch.arange(q) * self.n_tokens, persistent=False)
        # rotary tables and key positions for every position a KV cache (make_caches) can hold
        n_pos = cfg.max_seq_len + cfg.mtp_heads + 2
        cos, sin = rope_tables(n_pos, d // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("key_pos", torch.arange(n_pos), persistent=False)
        self._heads_w: tuple | None = None  # (key, stacked independent-head weights), see heads_logits
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = RMSNorm(d)
        self.out = Linear(d, q * self.n_tokens)
        self.heads = nn.ModuleList(
            IndependentHead(d) if cfg.mtp_kind == "independent" else CascadedModule(cfg) for _ in range(cfg.mtp_heads))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            if m.weight.abs().sum() != 0:  # keep the zero init of independent heads
                nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    # -- pieces ----------------------------------------------------------------------------------------
    def embed_steps(self, steps: torch.Tensor) -> torch.Tensor:
        """steps (B, L, Q) token ids -> (B, L, D): the sum of the Q codebook embeddings."""
        return self.audio_emb(steps + self.cb_offset).sum(-2)

    def logits(self, n: torch.Tensor) -> torch.Tensor:
        """Normed hidden (..., D) -> (..., Q, n_tokens) through the shared output projection."""
        return self.out(n).unflatten(-1, (self.cfg.n_codebooks, self.n_tokens))

    def trunk(self, x, pos, mask=None, caches=None, rows=None, kv_len=None, start=None):
        """x (B, L, D) at pos (B, L) -> final hidden before norm (B, L, D). With caches, the mask is built here.

        start (host int, cached decoding only): every row sits at positions start .. start+L-1; keys past
        start+L-1 are then never read, the cache is written by slice, and a single query needs no mask.
        """
        if caches is not None:
            if start is not None:
                kv_len = start + x.shape[1]
            kv_len = kv_len or caches[0].k.shape[2]
            if start is None or x.shape[1] > 1:
                mask = (self.key_pos[:kv_len] <= pos[:, None, :, None])  # (B, 1, L, kv_len)
        rot = (pos, self.rope_cos[pos][:, :, None, None].to(x.dtype), self.rope_sin[pos][:, :, None, None].to(x.dtype))
        for i, blk in enumerate(self.blocks):
            x = blk(x, rot, mask, None if caches is None else caches[i], rows, kv_len, start)
        return x

    def head_step(self, k: int, h_prev: torch.Tensor, h_trunk: torch.Tensor, steps_prev: torch.Tensor | None):
        """MTP head k (0-based) -> (hidden for head k+1, logits (..., Q, n_tokens)).

        h_prev: hidden of head k-1 (the trunk's for k = 0); steps_prev (..., Q): the step head k-1 predicted
        (the main head's step for k = 0). Independent heads ignore both and read the trunk.
        """
        if self.cfg.mtp_kind == "independent":
            return h_trunk, self.logits(self.heads[k](self.norm_f(h_trunk)))
        h, n = self.heads[k](h_prev, self.embed_steps(steps_prev))
        return h, self.logits(n)

    def heads_logits(self, n: torch.Tensor, depth: int) -> torch.Tensor:
        """Main head and independent heads 0..depth-1 at once from the normed trunk hidden n (..., D)
        -> (..., 1 + depth, Q, n_tokens): [..., 0] = logits(n), [..., k + 1] = head_step(k, ...)[1].

        One matmul over the heads' stacked weights and one output projection for everything, instead of
        1 + 2 * depth small ones: on a CPU a decode step is dominated by per-call cost and weight reads.
        """
        d = self.cfg.d_model
        hk = (n @ self._stacked_heads()[:, : depth * d]).unflatten(-1, (depth, d))  # (..., depth, D)
        n = n[..., None, :]
        return self.logits(torch.cat([n, n + F.silu(hk)], dim=-2))

    def _stacked_heads(self) -> torch.Tensor:
        """(D, K * D): the independent heads' weights side by side, transposed; rebuilt when any changes."""
        ws = [h.lin.weight for h in self.heads]
        key = tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in ws)
        if self._heads_w is None or self._heads_w[0] != key:
            self._heads_w = (key, torch.cat([w.detach() for w in ws]).t().contiguous())
        return self._heads_w[1]

    # -- training-time forward -------------------------------------------------------------------------
    def forward(self, text, text_len, audio_in):
        """text (B, Lt) right-padded, text_len (B,), audio_in (B, S, Q) input steps -> trunk hidden at audio (B, S, D).

        Text is left-aligned against the audio (positions count from each row's first real token), so a row
        sees exactly what it sees at inference, whatever the padding.
        """
        b, lt = text.shape
        s = audio_in.shape[1]
        shift = (lt - text_len)[:, None]  # left-pad by rolling each row right
        src = (torch.arange(lt, device=text.device)[None] - shift) % lt
        text_l = text.gather(1, src)
        x = torch.cat([self.text_emb(text_l), self.embed_steps(audio_in)], dim=1)  # (B, Lt+S, D)
        pos = torch.arange(lt + s, device=text.device)[None] - shift  # (B, N); padding < 0
        valid = pos >= 0
        mask = (pos[:, None, :] <= pos[:, :, None]) & valid[:, None, :]
        mask = (mask | torch.eye(lt + s, dtype=torch.bool, device=text.device))[:, None]  # pads see themselves: no NaN
        h = self.trunk(x, pos.clamp(min=0), mask)
        return h[:, lt:]

    def training_grid(self, codes, code_len):
        """codes (B, Q, T), code_len (B,) -> (input steps (B, S, Q), targets (B, S+K, Q), loss mask (B, S+K, Q)).

        S = max over rows of last_step + 1. targets[s] is grid step s; forced tokens (BOS, END of q >= 1) and
        steps past a row's last step carry mask False.
        """
        b, q, t = codes.shape
        k = self.cfg.mtp_heads
        n_steps = last_step(t, q) + 1
        grid = apply_delay(codes, self.bos_id, self.end_id, n_steps + k)  # (B, Q, S+K)
        s = torch.arange(n_steps + k, device=codes.device)[None, None]
        qq = delay_offsets(q).to(codes.device)[None, :, None]
        tl = code_len[:, None, None]
        frame = s - qq
        grid = torch.where(frame >= tl, torch.full_like(grid, self.end_id), grid)  # each row's own END
        mask = (frame >= 0) & ((frame < tl) | ((qq == 0) & (frame == tl)))
        grid, mask = grid.transpose(1, 2), mask.transpose(1, 2)  # (B, S+K, Q)
        bos = torch.full_like(grid[:, :1], self.bos_id)
        audio_in = torch.cat([bos, grid[:, : n_steps - 1]], dim=1)  # (B, S, Q)
        return audio_in, grid, mask

    def compute_loss(self, batch: dict, distill: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        text, text_len = batch["text"], batch["text_len"]
        codes, code_len = batch["codes"], batch["code_len"]
        if codes.dim() != 3 or codes.shape[1] != self.cfg.n_codebooks:
            raise SpeechMTPError(f"batch codes must be (B, {self.cfg.n_codebooks}, T); got {tuple(codes.shape)}: "
                                 "the data was encoded with a codec other than this model's")
        if codes.numel() and int(codes.max()) >= self.cfg.codebook_size:
            raise SpeechMTPError(f"batch codes reach {int(codes.max())} but codebook_size is {self.cfg.codebook_size}")
        audio_in, grid, mask = self.training_grid(codes, code_len)
        s = audio_in.shape[1]
        if text.shape[1] + s > self.cfg.max_seq_len:
            raise SpeechMTPError(f"a batch needs {text.shape[1] + s} positions (text {text.shape[1]} + audio steps {s}) but "
                                 f"max_seq_len is {self.cfg.max_seq_len}; drop or split longer utterances, or raise max_seq_len")
        h = self.forward(text, text_len, audio_in)  # (B, S, D)
        main = self.logits(self.norm_f(h))  # (B, S, Q, n)
        metrics: dict[str, float] = {}
        loss_main, acc_main, _ = self._ce(main, grid[:, :s], mask[:, :s])
        metrics["loss_main"], metrics["acc_main"] = loss_main.item(), acc_main
        loss = loss_main
        kk = self.cfg.mtp_heads
        h_prev, expected, run = h, 1.0, 1.0
        main_p = main.detach().float().softmax(-1) if distill else None
        for k in range(kk):
            h_prev, lg = self.head_step(k, h_prev, h, grid[:, k: k + s])  # teacher: grid step s+k
            tgt, m = grid[:, k + 1: k + 1 + s], mask[:, k + 1: k + 1 + s]
            soft = None
            if distill:  # main's own distribution at the position that predicts the same grid step
                soft = torch.cat([main_p[:, k + 1:], main_p[:, :k + 1] * 0], dim=1)
                m = m & (torch.arange(s, device=m.device) < s - k - 1)[None, :, None]
            lk, acc, frame_acc = self._ce(lg, tgt, m, soft)
            loss = loss + self._weight(k + 1) * lk
            run *= frame_acc
            expected += run
            metrics[f"loss_mtp{k + 1}"], metrics[f"acc_mtp{k + 1}"] = lk.item(), acc
            metrics[f"accept_frame_mtp{k + 1}"] = frame_acc
        if kk:
            metrics["expected_accept_per_step"] = expected
        metrics["loss"] = loss.item()
        return loss, metrics

    def _weight(self, k: int) -> float:
        c = self.cfg
        if c.mtp_weights == "constant":
            return 1.0
        if c.mtp_weights == "linear":
            return (c.mtp_heads - k + 1) / c.mtp_heads
        return c.mtp_decay ** (k - 1)

    def _ce(self, logits, target, mask, soft=None):
        """-> (mean loss over masked tokens, per-token top-1 accuracy, all-Q-correct rate over steps)."""
        n = self.n_tokens
        mf = mask.float()
        denom = mf.sum().clamp(min=1)
        if soft is None:
            tok = F.cross_entropy(logits.reshape(-1, n).float(), target.reshape(-1), reduction="none")
        else:
            tok = -(soft * logits.float().log_softmax(-1)).sum(-1).reshape(-1)
        loss = (tok * mf.reshape(-1)).sum() / denom
        with torch.no_grad():  # greedy as decoding sees it: BOS never, END only on codebook 0
            lg = logits.detach().clone()
            lg[..., self.bos_id] = -math.inf
            lg[..., 1:, self.end_id] = -math.inf
            ok = (lg.argmax(-1) == target) | ~mask
            acc = float(((lg.argmax(-1) == target) & mask).sum() / denom)
            step_has = mask.any(-1)
            frame_acc = float((ok.all(-1) & step_has).sum() / step_has.sum().clamp(min=1))
        return loss, acc, frame_acc

    # -- inference plumbing ----------------------------------------------------------------------------
    def make_caches(self, max_batch: int, length: int | None = None) -> list[KVCache]:
        """One KV cache per layer, owned by the caller (a decoder), so several decoders can share a model.
        Length: max_seq_len plus scratch for draft positions fed past a row's end."""
        length = length or self.cfg.max_seq_len + self.cfg.mtp_heads + 2
        p = self.out.weight
        hd = self.cfg.d_model // self.cfg.n_heads
        return [KVCache(max_batch, self.cfg.n_heads, length, hd, device=p.device, dtype=p.dtype) for _ in self.blocks]

    def forward_step(self, tokens, input_pos, caches, rows=None, kv_len=None, start=None):
        """Cached forward. tokens: audio steps (B, L, Q) or text ids (B, L); input_pos (B, L) -> hidden (B, L, D).

        Writes k/v at input_pos of cache rows `rows` (default 0..B-1); each query attends to keys at
        positions <= its own. kv_len (host int) bounds the keys read (max position + 1 over the batch).
        start (host int, optional): all rows sit at start .. start+L-1 (input_pos must agree); a faster path.
        """
        x = self.text_emb(tokens) if tokens.dim() == 2 else self.embed_steps(tokens)
        return self.trunk(x, input_pos, caches=caches, rows=rows, kv_len=kv_len, start=start)

    # -- parameters and checkpoints --------------------------------------------------------------------
    def mtp_parameters(self):
        return list(self.heads.parameters())

    def num_params(self, include_mtp: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_mtp else n - sum(p.numel() for p in self.mtp_parameters())

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), path / "model.safetensors", metadata={"format": "speechmtp-lm"})
        save_config(self.cfg, path / "config.json")

    @classmethod
    def from_pretrained(cls, path, device=None, **overrides) -> "SpeechLM":
        path = Path(path)
        if not path.is_dir():
            raise SpeechMTPError(f"checkpoint folder not found: {path} (expected config.json + model.safetensors)")
        cfg = load_config(ModelConfig, path / "config.json")
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        bad = set(overrides) - names
        if bad:
            raise SpeechMTPError(f"unknown model config override(s) {sorted(bad)}; known: {sorted(names)}")
        fresh_heads = any(k in ("mtp_heads", "mtp_kind") and overrides[k] != getattr(cfg, k) for k in overrides)
        cfg = dataclasses.replace(cfg, **overrides)
        model = cls(cfg)
        state = load_safetensors(path / "model.safetensors")
        if fresh_heads:
            state = {k: v for k, v in state.items() if not k.startswith("heads.")}
        own = model.state_dict()
        missing = [k for k in own if k not in state and not (fresh_heads and k.startswith("heads."))]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            raise SpeechMTPError(
                f"checkpoint {path} does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"wrong shape {wrong[:3]}); only mtp_heads/mtp_kind may be overridden when loading")
        model.load_state_dict(state, strict=not fresh_heads)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return model.to(dev)
