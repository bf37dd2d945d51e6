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


def allowed_tokens(g: torch.Tensor, end: torch.Tensor, n_codebooks: int, codebook_size: int,
                   max_frames: torch.Tensor) -> torch.Tensor:
    """Which tokens each codebook may take at grid step g (...), given codebook 0's END step `end` (...,
    INF if none yet) and max_frames (...). -> bool (..., Q, V + 2)."""
    q = torch.arange(n_codebooks, device=g.device)
    frame = g[..., None] - q  # (..., Q) frame index each codebook holds at step g
    force_end = (frame >= end[..., None]) | ((q == 0) & (frame >= max_frames[..., None]))
    state = torch.where(frame < 0, 1, torch.where(force_end, 2, 0))
    return _grammar_table(n_codebooks, codebook_size, g.device)[state, q]


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
    grid: torch.Tensor  # (Q, cap) emitted grid steps
    e: int = 0  # grid steps emitted
    end: int = INF
    frames_out: int = 0
    prefilled: bool = False
    finished: bool = False
    stats: GenerationStats = field(default_factory=GenerationStats)


class BatchDecoder:
    """Fixed slots stepped together: each step() is one forward pass over every active row.

    Rows sit at different positions and accept different numbers of drafts; the window is always
    1 + (largest draft depth among active rows) positions wide, unused positions padded.
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
        self.last = torch.zeros(mb, self.q, dtype=torch.long, device=dev)
        self.drafts = torch.zeros(mb, kk, self.q, dtype=torch.long, device=dev)
        # probabilities in at least float32, even for half-precision models
        self.pdtype = torch.promote_types(model.out.weight.dtype, torch.float32)
        self.qprobs = torch.zeros(mb, kk, self.q, self.n, dtype=self.pdtype, device=dev)
        self.d = torch.zeros(mb, dtype=torch.long, device=dev)
        # per-row settings, gathered by row index in the vectorised step
        # per-row settings (mb, 8): temperature, top_k, top_p, relaxed?, relaxed_top_k, relaxed_min_prob,
        # adaptive threshold, depth; one gather per step in the vectorised post-processing
        self.params = torch.zeros(mb, 8, dtype=torch.float64, device=dev)
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
        grid = torch.zeros(self.q, last_step(mf, self.q) + self.k + 2, dtype=torch.long, device=self.dev)
        self.slots[i] = _Slot(cfg, depth, gen, text, mf, grid)
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
    @torch.no_grad()
    def step(self) -> dict[int, torch.Tensor]:
        """Advance every active slot by one forward pass -> {slot: new complete frames (Q, n)}."""
        out: dict[int, torch.Tensor] = {}
        model = self.model
        groups: dict[int, list[int]] = {}  # new rows, prefilled together when their texts have equal length
        for i in self.active():
            if not self.slots[i].prefilled:
                groups.setdefault(self.slots[i].text.numel(), []).append(i)
        for lt, new in groups.items():
            t0 = time.perf_counter()
            text = torch.stack([self.slots[i].text for i in new])  # (B, Lt)
            bos = torch.full((len(new), 1, self.q), model.bos_id, device=self.dev)
            x = torch.cat([model.text_emb(text), model.embed_steps(bos)], dim=1)  # (B, Lt+1, D)
            pos = torch.arange(lt + 1, device=self.dev).expand(len(new), -1)
            h = model.trunk(x, pos, caches=self.caches, rows=torch.tensor(new, device=self.dev), kv_len=lt + 1)
            for i in new:
                self.slots[i].prefilled = True
            out.update(self._post(new, h[:, -1:], width=1, t0=t0))
        rows = [i for i in self.active() if i not in out]
        if rows:
            t0 = time.perf_counter()
            width = 1 + max(self.slots[i].depth for i in rows)
            idx = torch.tensor(rows, device=self.dev)
            tokens = torch.cat([self.last[idx, None], self.drafts[idx, : width - 1]], dim=1)  # (B, W, Q)
            # input step e (holding grid step e-1, the last emitted) sits at position Lt + e
            start = torch.tensor([self.slots[i].text.numel() + self.slots[i].e for i in rows], device=self.dev)
            pos = start[:, None] + torch.arange(width, device=self.dev)  # (B, W)
            kv_len = int(max(self.slots[i].text.numel() + self.slots[i].e for i in rows)) + width
            contiguous = rows == list(range(len(rows)))
            h = model.forward_step(tokens, pos, self.caches, rows=None if contiguous else idx, kv_len=kv_len)
            out.update(self._post(rows, h, width=width, t0=t0))
        return out

    def _post(self, rows: list[int], h: torch.Tensor, width: int, t0: float) -> dict[int, torch.Tensor]:
        """Verify, emit and re-draft for `rows` given the trunk hidden h (B, W, D) of their window."""
        model, dev, qn, v = self.model, self.dev, self.q, self.v
        slots = [self.slots[i] for i in rows]
        b, nd = len(rows), width - 1
        idx = torch.tensor(rows, device=dev)
        ar_b = torch.arange(b, device=dev)
        logits = model.logits(model.norm_f(h)).to(self.pdtype)  # (B, W, Q, n)
        e, end, mf = torch.tensor([[s.e, s.end, s.max_frames] for s in slots], device=dev).unbind(1)
        temp, topk, topp, relaxed, rtopk, rminp, thr, depth = self.params[idx].unbind(1)
        temp, topk, topp, rminp, thr = (t.to(self.pdtype) for t in (temp, topk, topp, rminp, thr))
        relaxed, rtopk, depth, topk = relaxed > 0, rtopk.long(), depth.long(), topk.long()
        d = self.d[idx]
        greedy = temp == 0
        ones = torch.ones_like(temp)
        temp_f = torch.where(greedy, ones, temp)  # greedy rows: plain softmax (confidence, relaxed min_prob)
        topk_f = torch.where(greedy, torch.zeros_like(topk), topk)
        topp_f = torch.where(greedy, ones, topp)
        dmax = max(s.depth for s in slots)
        # host-side flags: skip work no row needs (greedy rows need no probabilities at all)
        need_p = any(s.gen is not None or s.cfg.mode == "mtp-relaxed" or s.cfg.adaptive for s in slots)
        need_filter = any(s.gen is not None and (s.cfg.top_k > 0 or s.cfg.top_p < 1) for s in slots)

        def probs(lg):
            if need_filter:
                return probs_from_logits(lg, temp_f, topk_f, topp_f)
            return (lg / temp_f.view((-1,) + (1,) * (lg.dim() - 1)).to(lg.dtype)).softmax(-1)
        u = torch.zeros(b, 3, dmax + 1, qn, device=dev, dtype=self.pdtype)
        for r, s in enumerate(slots):
            if s.gen is not None:
                u[r, :, : s.depth + 1] = torch.rand((3, s.depth + 1, qn), generator=s.gen, device=dev)

        # the END step each window position sees: the known one, or the first drafted END before it
        jw = torch.arange(width, device=dev)
        g = e[:, None] + jw  # (B, W) grid step predicted at each window position
        x = self.drafts[idx, :nd]  # (B, nd, Q)
        valid = jw[:nd] < d[:, None]  # (B, nd)
        end_w = end[:, None].expand(b, width)
        if nd:
            cand = torch.where(valid & (x[..., 0] == model.end_id), g[:, :nd], torch.full_like(g[:, :nd], INF))
            end_w = torch.cat([end[:, None], torch.minimum(end[:, None], cand.cummin(1).values)], dim=1)
        ok = allowed_tokens(g, end_w, qn, v, mf[:, None])
        logits = logits.masked_fill(~ok, -math.inf)
        tgt = logits.argmax(-1)  # (B, W, Q)
        p = probs(logits) if need_p else None
        x_pad = torch.cat([x, tgt[:, -1:]], dim=1)  # (B, W, Q); position nd never holds a draft
        acc = torch.zeros(b, width, qn, dtype=torch.bool, device=dev)
        if nd:
            qp = self.qprobs[idx, :nd]
            acc_nd = x == tgt[:, :nd]
            if need_p:
                spec = self.accept_fn(p[:, :nd], qp, x, u[:, 0, :nd])
                rel = relaxed_accept(p[:, :nd], x, rtopk, rminp)
                rb, gb = relaxed[:, None, None], greedy[:, None, None]
                acc_nd = torch.where(rb, rel, torch.where(gb, acc_nd, spec))
            acc[:, :nd] = acc_nd & valid[..., None]
        a = acc.all(-1).long().cumprod(1).sum(1).clamp(max=d)  # (B,) drafts accepted
        # the step emitted after them: residual sample (spec), plain sample (relaxed), argmax (greedy)
        fresh = tgt
        if need_p:
            ur = u[:, 1, :width]
            q_pad = torch.zeros_like(p)
            if nd:
                q_pad[:, :nd] = qp * valid[..., None, None]
            fresh = torch.where(relaxed[:, None, None], sample_from_probs(p, ur), sample_from_probs(self.residual_fn(p, q_pad), ur))
            fresh = torch.where(greedy[:, None, None], tgt, fresh)
        new_all = torch.where(acc, x_pad, fresh)  # corrected step: accepted codebooks keep the draft
        new = new_all[ar_b, a]  # (B, Q)
        end_a = end_w[ar_b, a]
        end_out = torch.where((end_a == INF) & (new[:, 0] == model.end_id), e + a, end_a)
        emitted = torch.where(jw[None, :, None] < a[:, None, None], x_pad, new[:, None])  # (B, W, Q)

        # next drafts from the hidden state at the last accepted position
        depth_max = dmax
        if depth_max:
            h_sel = h[ar_b, a]  # (B, D)
            e_new = e + a + 1
            h_prev, tok, end_c = h_sel, new, end_out
            active = depth > 0
            dcount = torch.zeros_like(d)
            xs, qs = [], []
            for k in range(depth_max):
                h_prev, lg = model.head_step(k, h_prev, h_sel, tok)
                lg = lg.to(self.pdtype)  # (B, Q, n)
                gk = e_new + k
                lg = lg.masked_fill(~allowed_tokens(gk, end_c, qn, v, mf), -math.inf)
                xk = lg.argmax(-1)
                active = active & (k < depth)
                if need_p:
                    qk = probs(lg)
                    xk = torch.where(greedy[:, None], xk, sample_from_probs(qk, u[:, 2, k]))
                    conf = qk.max(-1).values.min(-1).values  # (B,) least confident codebook
                    active = active & ((k == 0) | (conf >= thr))
                    qs.append(qk)
                dcount = dcount + active.long()
                end_c = torch.where((end_c == INF) & (xk[:, 0] == model.end_id), gk, end_c)
                xs.append(xk)
                tok = xk
            self.drafts[idx, :depth_max] = torch.stack(xs, 1)
            if qs:
                self.qprobs[idx, :depth_max] = torch.stack(qs, 1)
            self.d[idx] = dcount
        self.last[idx] = new

        host = torch.stack([a, end_out, d], 1).tolist()  # the one device->host sync per step
        emitted = emitted.transpose(1, 2)  # (B, Q, W)
        out = {}
        dt = time.perf_counter() - t0
        for r, (i, s) in enumerate(zip(rows, slots)):
            na, s.end, nd_r = host[r]
            n_emit = na + 1
            if s.end != INF:
                n_emit = min(n_emit, last_step(s.end, qn) - s.e + 1)
            s.grid[:, s.e: s.e + n_emit] = emitted[r, :, :n_emit]
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
                out[i] = undo_delay(s.grid[None], complete, s.frames_out)[0]
                s.frames_out = complete
                st.frames = complete
            else:
                out[i] = s.grid.new_zeros(qn, 0)
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
