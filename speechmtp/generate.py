"""Decoding: the plain NTP reference, and the batched draft-and-verify decoder every caller uses.

One forward pass per decode step feeds each row [last emitted step, drafts ...] at its own positions.
The main head's logits at window position j predict grid step e + j; draft j is accepted when it
matches (greedy), passes min(1, p/q) per codebook (speculative sampling, lossless), or falls inside
the main head's top-k / probability floor ("mtp-relaxed", LOSSY). The accepted drafts plus one step
from the main head (the correction, or a bonus after a full accept) are emitted; the MTP heads then
draft the next steps from the hidden state at the last accepted position, inside the same step.

Random numbers: each slot owns a torch.Generator and draws one uniform block (3, D+1, Q) per forward
(D = its draft depth): [0] acceptance tests, [1] correction/bonus samples, [2] drafts. The block size
depends only on the slot's own config, so a slot's output never depends on its batch neighbours.
Greedy slots draw nothing.

Forced tokens (`allowed_tokens`): BOS on delayed slots before the start, END on codebooks q >= 1
after codebook 0 ended, END on codebook 0 at step max_frames. They are point masses under both p
and q, so they are always accepted and never change the lossless argument.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .model import SpeechLM, last_step, undo_delay
from .sampling import probs_from_logits, relaxed_accept, residual, sample_from_probs, speculative_accept
from .utils import SpeechMTPError

INF = 1 << 40  # "codebook 0 has not ended"
MODES = ("ntp", "mtp", "mtp-relaxed")


@dataclass
class GenerationConfig:
    mode: str = "mtp"  # "ntp" | "mtp" | "mtp-relaxed" (lossy)
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_frames: int = 1500
    draft_depth: int | None = None  # <= model.cfg.mtp_heads; None = all heads
    adaptive: bool = False  # draft only while the heads are confident
    adaptive_threshold: float = 0.5  # min over codebooks of the head's max probability
    relaxed_top_k: int = 3  # mtp-relaxed: accept a draft token within the main head's top-k ...
    relaxed_min_prob: float = 0.0  # ... and with at least this probability
    seed: int | None = None

    def resolve(self, model: SpeechLM) -> tuple["GenerationConfig", int]:
        """Validate against the model -> (self, draft depth D)."""
        k = model.cfg.mtp_heads
        if self.mode not in MODES:
            raise SpeechMTPError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise SpeechMTPError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        if self.max_frames < 1:
            raise SpeechMTPError(f"max_frames must be >= 1, got {self.max_frames}")
        if not 0 <= self.adaptive_threshold <= 1 or not 0 <= self.relaxed_min_prob <= 1 or self.relaxed_top_k < 0:
            raise SpeechMTPError("adaptive_threshold and relaxed_min_prob must lie in [0, 1], relaxed_top_k >= 0")
        if self.mode == "ntp":
            return self, 0
        if k == 0:
            raise SpeechMTPError(f"mode {self.mode!r} needs MTP heads but this model has none; use mode='ntp' "
                                 "or train heads (speechmtp train --heads-only)")
        d = k if self.draft_depth is None else int(self.draft_depth)
        if not 1 <= d <= k:
            raise SpeechMTPError(f"draft_depth must be in 1..{k} (the model's mtp_heads), got {self.draft_depth}")
        return self, d


@dataclass
class GenerationStats:
    forward_passes: int = 0
    steps: int = 0
    frames: int = 0
    accepted_hist: list[int] = field(default_factory=list)  # [n] = forward passes that emitted n steps
    depth_tried: list[int] = field(default_factory=list)  # per draft depth: drafts verified
    depth_accepted: list[int] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def accepted_per_step(self) -> float:
        """Mean grid steps emitted per forward pass (1.0 for plain NTP)."""
        return self.steps / max(self.forward_passes, 1)

    @property
    def depth_acceptance(self) -> list[float]:
        return [a / t if t else 0.0 for a, t in zip(self.depth_accepted, self.depth_tried)]

    def merge(self, other: "GenerationStats") -> "GenerationStats":
        def add(a, b):
            n = max(len(a), len(b))
            return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]
        return GenerationStats(self.forward_passes + other.forward_passes, self.steps + other.steps,
                               self.frames + other.frames, add(self.accepted_hist, other.accepted_hist),
                               add(self.depth_tried, other.depth_tried), add(self.depth_accepted, other.depth_accepted),
                               self.wall_time + other.wall_time)

    def to_dict(self) -> dict:
        return {"forward_passes": self.forward_passes, "steps": self.steps, "frames": self.frames,
                "accepted_per_step": self.accepted_per_step, "accepted_hist": self.accepted_hist,
                "depth_acceptance": self.depth_acceptance, "wall_time": self.wall_time}


_TABLES: dict = {}


def _grammar_table(n_codebooks: int, codebook_size: int, device) -> torch.Tensor:
    """bool (3, Q, V + 2): state 0 = free (codes; END too on codebook 0), 1 = BOS only, 2 = END only."""
    key = (n_codebooks, codebook_size, str(device))
    if key not in _TABLES:
        tok = torch.arange(codebook_size + 2, device=device)
        code, end, bos = tok < codebook_size, tok == codebook_size, tok == codebook_size + 1
        free = torch.stack([code | end] + [code] * (n_codebooks - 1))
        _TABLES[key] = torch.stack([free, bos.expand_as(free), end.expand_as(free)])
    return _TABLES[key]


def grammar_state(g: torch.Tensor, end_q: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """State of each codebook at grid step g (...): 0 free, 1 BOS only, 2 END only -> (..., Q).

    end_q (..., Q): the first frame each codebook must END at: codebook 0's END step for every codebook,
    capped by max_frames on codebook 0. q = arange(Q)."""
    frame = g[..., None] - q  # (..., Q) frame index each codebook holds at step g
    return torch.where(frame < 0, 1, (frame >= end_q) * 2)


def allowed_tokens(g: torch.Tensor, end: torch.Tensor, n_codebooks: int, codebook_size: int,
                   max_frames: torch.Tensor) -> torch.Tensor:
    """Which tokens each codebook may take at grid step g (...), given codebook 0's END step `end` (...,
    INF if none yet) and max_frames (...). -> bool (..., Q, V + 2)."""
    q = torch.arange(n_codebooks, device=g.device)
    end_q = torch.where(q == 0, torch.minimum(end, torch.as_tensor(max_frames, device=g.device))[..., None], end[..., None])
    return _grammar_table(n_codebooks, codebook_size, g.device)[grammar_state(g, end_q, q), q]


def _check_text(model: SpeechLM, text_ids) -> torch.Tensor:
    t = torch.as_tensor(text_ids, dtype=torch.long).flatten()
    if t.numel() == 0:
        raise SpeechMTPError("text_ids is empty; encode the text with speechmtp.text.encode first")
    if int(t.min()) < 0 or int(t.max()) >= model.cfg.text_vocab_size:
        raise SpeechMTPError(f"text ids must lie in [0, {model.cfg.text_vocab_size}); encode text with speechmtp.text.encode")
    return t


def _max_frames(model: SpeechLM, n_text: int, cfg: GenerationConfig, max_len: int | None = None) -> int:
    room = (max_len or model.cfg.max_seq_len) - n_text - 1 - max(0, model.cfg.n_codebooks - 2)
    if room < 1:
        raise SpeechMTPError(f"text of {n_text} tokens leaves no room for audio in max_seq_len "
                             f"{model.cfg.max_seq_len}; split the text into sentences (speechmtp.text.split_sentences)")
    return min(cfg.max_frames, room)


@torch.no_grad()
def ntp_reference(model: SpeechLM, text_ids, cfg: GenerationConfig | None = None) -> torch.Tensor:
    """The slow, obvious decoder: one frame step per full forward pass, no cache, no drafts. -> codes (Q, T).

    Same random stream as a mode="ntp" slot (one (3, 1, Q) uniform block per step, [1, 0] used), so with
    the same seed it reproduces generate(..., mode="ntp") exactly, sampling included.
    """
    cfg = cfg or GenerationConfig(mode="ntp")
    model.eval()
    dev = model.out.weight.device
    text = _check_text(model, text_ids).to(dev)
    qn, v = model.cfg.n_codebooks, model.cfg.codebook_size
    mf = torch.tensor(_max_frames(model, text.numel(), cfg), device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    steps = torch.full((1, 1, qn), model.bos_id, device=dev)  # input steps (1, S, Q)
    end = INF
    while True:
        e = steps.shape[1] - 1  # grid step being predicted
        h = model(text[None], torch.tensor([text.numel()], device=dev), steps)[:, -1]
        logits = model.logits(model.norm_f(h))[0].to(torch.promote_types(h.dtype, torch.float32))  # (Q, n)
        ok = allowed_tokens(torch.tensor(e, device=dev), torch.tensor(end, device=dev), qn, v, mf)
        logits = logits.masked_fill(~ok, -math.inf)
        if cfg.temperature == 0:
            tok = logits.argmax(-1)
        else:
            u = torch.rand((3, 1, qn), generator=gen, device=dev)[1, 0]
            tok = sample_from_probs(probs_from_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), u)
        if end == INF and int(tok[0]) == model.end_id:
            end = e
        steps = torch.cat([steps, tok[None, None]], dim=1)
        if end != INF and e >= last_step(end, qn):
            return undo_delay(steps[:, 1:].transpose(1, 2), end)[0]


@dataclass
class _Slot:
    cfg: GenerationConfig
    depth: int
    gen: torch.Generator | None
    text: torch.Tensor
    max_frames: int
    grid: list = field(default_factory=list)  # emitted grid steps, each a list of Q ids (host side)
    e: int = 0  # grid steps emitted
    end: int = INF
    frames_out: int = 0
    prefilled: bool = False
    finished: bool = False
    draft_end: bool = False  # a stored draft has END on codebook 0 (host copy from the last step's sync)
    stats: GenerationStats = field(default_factory=GenerationStats)


class BatchDecoder:
    """Fixed slots stepped together: each step() is one forward pass over every active row.

    Rows sit at different positions and accept different numbers of drafts; the window is always
    1 + (largest draft depth among active rows) positions wide, unused positions padded.

    The step is written for small per-step overhead (on a CPU a decode step is mostly kernel launches):
    state lives in preallocated tensors indexed by row, host-known facts (positions, END steps, depths)
    go to the device as one small tensor, and exactly one small tensor comes back per step.
    """

    # tests swap in wrong rules to show that the losslessness test can fail
    accept_fn = staticmethod(speculative_accept)
    residual_fn = staticmethod(residual)

    def __init__(self, model: SpeechLM, max_batch: int, device=None, max_len: int | None = None):
        """max_len: positions per row (text + audio steps), default and at most model.cfg.max_seq_len;
        a smaller one shrinks the KV cache when sessions are known to be short."""
        if max_batch < 1:
            raise SpeechMTPError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.dev = torch.device(device) if device is not None else model.out.weight.device
        if self.dev != model.out.weight.device:
            raise SpeechMTPError(f"model is on {model.out.weight.device} but device={self.dev} was asked; move the model first")
        self.max_batch = max_batch
        c = model.cfg
        self.q, self.v, self.n, self.k = c.n_codebooks, c.codebook_size, model.n_tokens, c.mtp_heads
        self.max_len = min(max_len or c.max_seq_len, c.max_seq_len)
        self.caches = model.make_caches(max_batch, self.max_len + c.mtp_heads + 2)
        kk, dev, mb = max(self.k, 1), self.dev, max_batch
        # the next window per row: [last emitted step, drafts ...]; a contiguous batch feeds a view of it
        self.win = torch.zeros(mb, 1 + kk, self.q, dtype=torch.long, device=dev)
        self.last, self.drafts = self.win[:, 0], self.win[:, 1:]
        # probabilities in at least float32, even for half-precision models
        self.pdtype = torch.promote_types(model.out.weight.dtype, torch.float32)
        self.qprobs = torch.zeros(mb, kk, self.q, self.n, dtype=self.pdtype, device=dev)
        self.d = torch.zeros(mb, dtype=torch.long, device=dev)
        # per-row settings (mb, 8): temperature, top_k, top_p, relaxed?, relaxed_top_k, relaxed_min_prob,
        # adaptive threshold, depth; one gather per step in the vectorised post-processing
        self.params = torch.zeros(mb, 8, dtype=torch.float64, device=dev)
        # constants the step indexes instead of rebuilding
        self.ar = torch.arange(max(mb, kk + 2), device=dev)
        self.qar = torch.arange(self.q, device=dev)
        allowed = _grammar_table(self.q, self.v, dev)  # (3, Q, n): adding the bias masks like masked_fill(-inf)
        self.bias = torch.zeros(allowed.shape, dtype=self.pdtype, device=dev).masked_fill(~allowed, -math.inf)
        self.onehot_end = allowed[2, 0].to(self.pdtype)  # (n,) a forced END as a distribution
        self.slots: dict[int, _Slot] = {}

    # -- slot management -------------------------------------------------------------------------------
    def add(self, text_ids, cfg: GenerationConfig | None = None) -> int:
        cfg, depth = (cfg or GenerationConfig()).resolve(self.model)
        free = [i for i in range(self.max_batch) if i not in self.slots]
        if not free:
            raise SpeechMTPError(f"all {self.max_batch} decoder slots are busy; wait for one to finish or raise max_batch")
        i = free[0]
        text = _check_text(self.model, text_ids).to(self.dev)
        mf = _max_frames(self.model, text.numel(), cfg, self.max_len)
        gen = None
        if cfg.temperature > 0:
            gen = torch.Generator(device=self.dev)
            gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
        self.slots[i] = _Slot(cfg, depth, gen, text, mf)
        self.params[i] = torch.tensor([cfg.temperature, cfg.top_k, cfg.top_p, float(cfg.mode == "mtp-relaxed"),
                                       cfg.relaxed_top_k, cfg.relaxed_min_prob,
                                       cfg.adaptive_threshold if cfg.adaptive else 0.0, depth], dtype=torch.float64)
        self.d[i] = 0
        return i

    def done(self, slot: int) -> bool:
        return self.slots[slot].finished

    def remove(self, slot: int) -> None:
        self.slots.pop(slot, None)  # the row's cache is simply overwritten by the next prefill

    def stats(self, slot: int) -> GenerationStats:
        return self.slots[slot].stats

    def active(self) -> list[int]:
        return [i for i, s in self.slots.items() if not s.finished]

    # -- decoding --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> dict[int, torch.Tensor]:
        """Advance every active slot by one forward pass -> {slot: new complete frames (Q, n)}."""
        out: dict[int, torch.Tensor] = {}
        model = self.model
        active = self.active()
        groups: dict[int, list[int]] = {}  # new rows, prefilled together when their texts have equal length
        for i in active:
            if not self.slots[i].prefilled:
                groups.setdefault(self.slots[i].text.numel(), []).append(i)
        for lt, new in groups.items():
            t0 = time.perf_counter()
            text = torch.stack([self.slots[i].text for i in new])  # (B, Lt)
            bos = torch.full((len(new), 1, self.q), model.bos_id, device=self.dev)
            x = torch.cat([model.text_emb(text), model.embed_steps(bos)], dim=1)  # (B, Lt+1, D)
            pos = torch.arange(lt + 1, device=self.dev).expand(len(new), -1)
            contiguous = new == list(range(len(new)))
            h = model.trunk(x, pos, caches=self.caches, rows=None if contiguous else torch.tensor(new, device=self.dev),
                            start=0)
            for i in new:
                self.slots[i].prefilled = True
            out.update(self._post(new, h[:, -1:], width=1, t0=t0))
        rows = [i for i in active if i not in out]
        if rows:
            t0 = time.perf_counter()
            b = len(rows)
            width = 1 + max(self.slots[i].depth for i in rows)
            idx = None if rows == list(range(b)) else torch.tensor(rows, device=self.dev)
            tokens = self.win[:b, :width] if idx is None else self.win[idx, :width]  # (B, W, Q)
            # input step e (holding grid step e-1, the last emitted) sits at position Lt + e
            start = [self.slots[i].text.numel() + self.slots[i].e for i in rows]
            same = min(start) == max(start)
            pos = torch.tensor([[p + j for j in range(width)] for p in start], device=self.dev)  # (B, W)
            h = model.forward_step(tokens, pos, self.caches, rows=idx, kv_len=max(start) + width,
                                   start=start[0] if same else None)
            out.update(self._post(rows, h, width=width, t0=t0))
        return out

    def _post(self, rows: list[int], h: torch.Tensor, width: int, t0: float) -> dict[int, torch.Tensor]:
        """Verify, emit and re-draft for `rows` given the trunk hidden h (B, W, D) of their window."""
        model, dev, qn, end_id = self.model, self.dev, self.q, self.model.end_id
        slots = [self.slots[i] for i in rows]
        b, nd = len(rows), width - 1
        idx = None if rows == list(range(b)) else torch.tensor(rows, device=dev)

        def get(t):  # this batch's rows of a per-row state tensor
            return t[:b] if idx is None else t[idx]

        def put(t, val):
            if idx is None:
                t[:b] = val
            else:
                t[idx] = val
        ar_b = self.ar[:b]
        # host-known per-row facts, one transfer: e, END step, depth, per-codebook END bound from max_frames
        hv = torch.tensor([[s.e, s.end, s.depth, s.max_frames] + [INF] * (qn - 1) for s in slots], device=dev)
        e, end, depth, mf_q = hv[:, 0], hv[:, 1], hv[:, 2], hv[:, 3:]  # mf_q (B, Q)
        dmax = max(s.depth for s in slots)
        # host-side flags: skip work no row needs (greedy rows need no probabilities at all)
        need_p = any(s.gen is not None or s.cfg.mode == "mtp-relaxed" or s.cfg.adaptive for s in slots)
        need_filter = any(s.gen is not None and (s.cfg.top_k > 0 or s.cfg.top_p < 1) for s in slots)
        if need_p:
            temp, topk, topp, relaxed, rtopk, rminp, thr, _ = get(self.params).unbind(1)
            temp, topk, topp, rminp, thr = (t.to(self.pdtype) for t in (temp, topk, topp, rminp, thr))
            relaxed, rtopk, topk = relaxed > 0, rtopk.long(), topk.long()
            greedy = temp == 0
            ones = torch.ones_like(temp)
            temp_f = torch.where(greedy, ones, temp)  # greedy rows: plain softmax (confidence, relaxed min_prob)
            topk_f = torch.where(greedy, torch.zeros_like(topk), topk)
            topp_f = torch.where(greedy, ones, topp)
            u = torch.zeros(b, 3, dmax + 1, qn, device=dev, dtype=self.pdtype)
            for r, s in enumerate(slots):
                if s.gen is not None:
                    u[r, :, : s.depth + 1] = torch.rand((3, s.depth + 1, qn), generator=s.gen, device=dev)

        def rowwise(t, like):  # a per-row (B,) tensor shaped to broadcast against like (B, ...)
            return t.view((-1,) + (1,) * (like.dim() - 1))

        def probs(lg):
            if need_filter:
                return probs_from_logits(lg, temp_f, topk_f, topp_f)
            return (lg / rowwise(temp_f, lg).to(lg.dtype)).softmax(-1)

        # host-known: no window position (main head) / no draft position (heads) is in a forced BOS or END state,
        # so the grammar reduces to the constant "free" row. Drafted ENDs are forced afterwards (force_end).
        main_free = all(s.e >= qn - 1 and s.end == INF and not s.draft_end and s.e + width - 1 < s.max_frames
                        for s in slots)
        draft_free = all(s.e >= qn - 2 and s.e + width + dmax - 1 < s.max_frames for s in slots)

        def masked(lg, g, end_g):
            """Logits (B, ..., Q, n) at grid steps g (B, ...) that see codebook 0's END at end_g (B, ...): the
            grammar (`allowed_tokens`) applied as an additive 0 / -inf bias."""
            end_q = torch.minimum(end_g[..., None], mf_q.view((b,) + (1,) * (g.dim() - 1) + (qn,)))
            return lg + self.bias[grammar_state(g, end_q, self.qar), self.qar]

        n_h = model.norm_f(h)  # (B, W, D)
        independent = model.cfg.mtp_kind == "independent" and dmax > 0
        if independent:  # main and draft heads at every window position in one projection; drafts picked below
            lg_all = model.heads_logits(n_h, dmax).to(self.pdtype)  # (B, W, 1 + dmax, Q, n)
            logits = lg_all[:, :, 0]
        else:
            logits = model.logits(n_h).to(self.pdtype)  # (B, W, Q, n)
        # the END step each window position sees: the known one, or the first drafted END before it
        jw = self.ar[:width]
        g = e[:, None] + jw  # (B, W) grid step predicted at each window position
        d = get(self.d)
        end_w = end[:, None].expand(b, width)
        if nd:
            x = get(self.drafts)[:, :nd]  # (B, nd, Q)
            valid = jw[:nd] < d[:, None]  # (B, nd)
            if not main_free:
                cand = torch.where(valid & (x[..., 0] == end_id), g[:, :nd], INF)
                end_w = torch.cat([end[:, None], torch.minimum(end[:, None], cand.cummin(1).values)], dim=1)
        logits = logits + self.bias[0] if main_free else masked(logits, g, end_w)
        tgt = logits.argmax(-1)  # (B, W, Q)
        p = probs(logits) if need_p else None
        a = torch.zeros_like(e)
        if nd:
            acc = x == tgt[:, :nd]
            if need_p:
                qp = get(self.qprobs)[:, :nd]
                spec = self.accept_fn(p[:, :nd], qp, x, u[:, 0, :nd])
                rel = relaxed_accept(p[:, :nd], x, rtopk, rminp)
                acc = torch.where(rowwise(relaxed, acc), rel, torch.where(rowwise(greedy, acc), acc, spec))
            acc = acc & valid[..., None]  # (B, nd, Q)
            a = acc.all(-1).long().cumprod(1).sum(1)  # (B,) drafts accepted (<= d: invalid ones never pass)
        # the steps emitted at window positions 0..a: accepted drafts, then the corrected / bonus step. Greedy:
        # an accepted draft equals the argmax, and so does the correction, so the argmax row is the answer.
        steps = tgt
        if need_p:  # residual sample (spec), plain sample (relaxed), argmax (greedy)
            ur = u[:, 1, :width]
            q_pad = torch.zeros_like(p)
            if nd:
                q_pad[:, :nd] = qp * valid[..., None, None]
            fresh = torch.where(rowwise(relaxed, tgt), sample_from_probs(p, ur),
                                sample_from_probs(self.residual_fn(p, q_pad), ur))
            steps = torch.where(rowwise(greedy, tgt), tgt, fresh)
            if nd:  # corrected step: accepted codebooks keep the draft
                steps = torch.cat([torch.where(acc, x, steps[:, :nd]), steps[:, nd:]], dim=1)
        new = steps[ar_b, a]  # (B, Q)
        end_out = torch.minimum(end_w[ar_b, a], torch.where(new[:, 0] == end_id, e + a, INF))

        # next drafts from the hidden state at the last accepted position
        if dmax:
            gk = (e + a + 1)[:, None] + self.ar[:dmax]  # (B, dmax) grid step each depth drafts
            uk = u[:, 2, :dmax] if need_p else None

            def choose(lg, g_, end_g, u_):  # -> drafted steps, the distribution they were drawn from
                lg = lg.to(self.pdtype)
                lg = lg + self.bias[0] if draft_free else masked(lg, g_, end_g)
                xk = lg.argmax(-1)
                if not need_p:
                    return xk, None
                qk = probs(lg)
                return torch.where(rowwise(greedy, xk), xk, sample_from_probs(qk, u_)), qk

            def force_end(xk, qk, g_, seen):  # codebooks at or past the END seen at g_ become END point masses
                forced = (g_[..., None] - self.qar) >= seen[..., None]  # (B, ..., Q)
                xk = torch.where(forced, end_id, xk)
                return xk, (torch.where(forced[..., None], self.onehot_end, qk) if need_p else None)
            if independent:
                # every head reads the same hidden: take them together, first as if no draft ENDed ...
                xs, qs = choose(lg_all[ar_b, a, 1:], gk, end_out[:, None].expand(b, dmax), uk)
                # ... then force END where an earlier END demands it. Drafts up to the first drafted END are
                # exact; after it, forced entries are point masses and the rest keep their (free) state.
                cand = torch.where(xs[..., 0] == end_id, gk, INF).cummin(1).values
                seen = torch.minimum(end_out[:, None], torch.cat([cand.new_full((b, 1), INF), cand[:, :-1]], 1))
                xs, qs = force_end(xs, qs, gk, seen)
            else:  # cascaded: each module reads the previous one's draft
                h_sel = h[ar_b, a]
                h_prev, tok, end_c, xl, ql = h_sel, new, end_out, [], []
                for k in range(dmax):
                    h_prev, lg = model.head_step(k, h_prev, h_sel, tok)
                    tok, qk = choose(lg, gk[:, k], end_c, None if uk is None else uk[:, k])
                    if draft_free:
                        tok, qk = force_end(tok, qk, gk[:, k], end_c)
                    end_c = torch.minimum(end_c, torch.where(tok[:, 0] == end_id, gk[:, k], INF))
                    xl.append(tok)
                    ql.append(qk)
                xs, qs = torch.stack(xl, 1), (torch.stack(ql, 1) if need_p else None)
            put(self.drafts[:, :dmax], xs)
            if need_p:
                put(self.qprobs[:, :dmax], qs)
                # adaptive: draft depth k+1 only while every depth so far was confident
                conf = qs.max(-1).values.min(-1).values  # (B, dmax) least confident codebook
                ok = (self.ar[:dmax] < depth[:, None]) & ((self.ar[:dmax] == 0) | (conf >= thr[:, None]))
                put(self.d, ok.long().cumprod(1).sum(1))
            else:
                put(self.d, depth)
        put(self.last, new)

        # the one device->host sync per step: accepted, END, drafts verified, and the window's steps
        # (+ codebook 0 of the new drafts, so the next step knows on the host whether any of them is END)
        host = torch.cat([torch.stack([a, end_out, d], 1), steps.flatten(1)] + ([xs[..., 0]] if dmax else []), 1).tolist()
        out = {}
        dt = time.perf_counter() - t0
        for r, (i, s) in enumerate(zip(rows, slots)):
            na, s.end, nd_r = host[r][:3]
            n_emit = na + 1
            if s.end != INF:
                n_emit = min(n_emit, last_step(s.end, qn) - s.e + 1)
            s.grid += [host[r][3 + j * qn: 3 + (j + 1) * qn] for j in range(n_emit)]
            s.draft_end = end_id in host[r][3 + width * qn: 3 + width * qn + s.depth]
            s.e += n_emit
            st = s.stats
            st.forward_passes += 1
            st.steps += n_emit
            while len(st.accepted_hist) <= n_emit:
                st.accepted_hist.append(0)
            st.accepted_hist[n_emit] += 1
            if len(st.depth_tried) < s.depth:
                st.depth_tried += [0] * (s.depth - len(st.depth_tried))
                st.depth_accepted += [0] * (s.depth - len(st.depth_accepted))
            for j in range(min(nd_r, na + 1)):  # depth j+1 was verified iff all shallower drafts passed
                st.depth_tried[j] += 1
                st.depth_accepted[j] += int(j < na)
            s.finished = s.end != INF and s.e > last_step(s.end, qn)
            complete = s.end if s.finished else min(s.end, max(0, s.e - qn + 1))
            st.wall_time += dt / len(rows)
            if complete > s.frames_out:
                # undo the delay pattern on the host: frame t of codebook q sits at grid step t + q
                out[i] = torch.tensor([[s.grid[t + q][q] for t in range(s.frames_out, complete)] for q in range(qn)],
                                      dtype=torch.long, device=dev)
                s.frames_out = complete
                st.frames = complete
            else:
                out[i] = torch.zeros(qn, 0, dtype=torch.long, device=dev)
        return out


class Generation:
    """Iterator over (Q, n) chunks of finished frames; `.stats` fills in as it runs."""

    def __init__(self, model: SpeechLM, text_ids, cfg: GenerationConfig):
        n_text = _check_text(model, text_ids).numel()  # a cache just long enough for this one session
        self._dec = BatchDecoder(model, 1, max_len=n_text + 1 + last_step(cfg.max_frames, model.cfg.n_codebooks))
        self._slot = self._dec.add(text_ids, cfg)

    @property
    def stats(self) -> GenerationStats:
        return self._dec.stats(self._slot)

    def __iter__(self):
        while not self._dec.done(self._slot):
            chunk = self._dec.step()[self._slot]
            if chunk.shape[1]:
                yield chunk

    def codes(self) -> torch.Tensor:
        """Run to the end -> all frames (Q, T)."""
        chunks = list(self)
        return torch.cat(chunks, 1) if chunks else torch.zeros(self._dec.q, 0, dtype=torch.long)


def generate(model: SpeechLM, text_ids, cfg: GenerationConfig | None = None) -> Generation:
    return Generation(model, text_ids, cfg or GenerationConfig())
