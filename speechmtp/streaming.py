"""Exact streaming versions of the layers a causal convolutional decoder is built from.

Each wrapper shares the parameters of an ordinary torch module and keeps the state that lets it run
chunk by chunk: a causal convolution keeps its last input samples, a transposed convolution holds
back the overlapping tail of its output to add to the next chunk, an LSTM carries (h, c). Feeding a
signal in any chunking and finally calling `step(empty, final=True)` gives the same output as one
offline call, to float precision (tests/test_codec_encodec.py holds EnCodec to it).

Every layer has `step(x (B, C, t), final=False) -> (B, C', t')` and `reset()`. `final=True` marks the
end of the stream: a layer then emits what it held back for offline-equivalent edge handling.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _weight(module: nn.Module) -> torch.Tensor:
    """The module's current weight, also under the old hook-style weight norm (whose `.weight`
    attribute is only refreshed by a forward call, so it is stale after `load_state_dict`)."""
    from torch.nn.utils.weight_norm import WeightNorm

    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == "weight":
            return hook.compute_weight(module)
    return module.weight


def _empty(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], channels, 0)


def pad_left(x: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """Left padding as encodec's `pad1d` does it, including its fix for reflecting a signal
    shorter than the padding (zeros are appended, reflected, then dropped again)."""
    if pad == 0:
        return x
    if mode in ("zero", "constant"):
        return F.pad(x, (pad, 0))
    if mode == "reflect" and x.shape[-1] <= pad:
        extra = pad - x.shape[-1] + 1
        return F.pad(F.pad(x, (0, extra)), (pad, 0), mode="reflect")[..., : x.shape[-1] + pad]
    return F.pad(x, (pad, 0), mode=mode)


class StreamingLayer:
    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class Pointwise(StreamingLayer):
    """A per-sample function (ELU, tanh, Identity): stateless."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def step(self, x, final=False):
        return self.fn(x)


class CausalConv1d(StreamingLayer):
    """nn.Conv1d (stride 1, no built-in padding) run causally with `(k-1)*dilation` left padding.

    Offline, the left padding uses `pad_mode`; reflect padding reads input samples 1..pad, so the
    first output needs pad+1 input samples. The layer therefore buffers its first input until it has
    that many (or the stream ends), pads once, and from then on keeps the last `pad` input samples
    as context. With zero padding there is nothing to wait for.
    """

    def __init__(self, conv: nn.Conv1d, pad_mode: str = "zero"):
        if conv.stride[0] != 1 or conv.padding[0] != 0 or conv.padding_mode != "zeros":
            raise NotImplementedError("streaming supports stride-1 Conv1d without built-in padding")
        if pad_mode not in ("zero", "constant", "reflect", "replicate"):
            raise NotImplementedError(f"streaming cannot reproduce pad_mode {pad_mode!r}")
        self.conv = conv
        self.pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.pad_mode = pad_mode
        # samples reflect padding needs before the first output can be exact; replicate needs one
        self.need = {"reflect": self.pad + 1, "replicate": 1}.get(pad_mode, 0) if self.pad else 0
        self.reset()

    def reset(self):
        self.started = False
        self.buf: torch.Tensor | None = None  # before start: pending input; after: the last `pad` inputs

    def step(self, x, final=False):
        x = x if self.buf is None else torch.cat([self.buf, x], dim=-1)
        if not self.started:
            if x.shape[-1] < max(self.need, 1) and not (final and x.shape[-1] > 0):
                self.buf = x
                return _empty(x, self.conv.out_channels)
            x = pad_left(x, self.pad, self.pad_mode)
            self.started = True
        self.buf = x[..., x.shape[-1] - self.pad:] if self.pad else None
        if x.shape[-1] <= self.pad:
            return _empty(x, self.conv.out_channels)
        c = self.conv
        return F.conv1d(x, _weight(c), c.bias, dilation=c.dilation, groups=c.groups)


class CausalConvTranspose1d(StreamingLayer):
    """nn.ConvTranspose1d whose offline output is trimmed by `kernel - stride` samples on the right.

    Output sample n depends only on inputs <= n // stride, so each chunk of t inputs completes t*stride
    outputs; the last `kernel - stride` samples still lack the next inputs' contributions and are held
    back (without bias) to be overlap-added. At the end of the stream the held tail is exactly what
    offline trims, so it is dropped.
    """

    def __init__(self, convtr: nn.ConvTranspose1d):
        if convtr.padding[0] != 0 or convtr.output_padding[0] != 0 or convtr.dilation[0] != 1:
            raise NotImplementedError("streaming supports ConvTranspose1d without padding or dilation")
        self.convtr = convtr
        self.stride = convtr.stride[0]
        self.reset()

    def reset(self):
        self.tail: torch.Tensor | None = None  # (B, C_out, kernel - stride)

    def _convtr(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """conv_transpose1d without bias as one matmul and an overlap-add (col2im). Why: on short inputs
        (2..8 frames) torch's CPU conv_transpose1d takes a slow path, ~25 ms for EnCodec's first layer."""
        if self.convtr.groups != 1:
            return F.conv_transpose1d(x, w, None, stride=self.stride, groups=self.convtr.groups)
        (b, cin, t), (cout, k) = x.shape, w.shape[1:]
        # (B, t, C_in) contiguous @ (C_in, C_out*k): with few frames MKL is ~4x faster in this layout
        cols = torch.matmul(x.transpose(1, 2).contiguous(), w.reshape(cin, cout * k))  # (B, t, C_out*k)
        y = F.fold(cols.transpose(1, 2), (1, (t - 1) * self.stride + k), (1, k), stride=(1, self.stride))
        return y.view(b, cout, -1)  # (B, C_out, 1, L) -> (B, C_out, L)

    def step(self, x, final=False):
        c = self.convtr
        if x.shape[-1] == 0:
            return _empty(x, c.out_channels)
        y = self._convtr(x, _weight(c))  # (B, C_out, (t-1)*s + k)
        if self.tail is not None:
            n = self.tail.shape[-1]
            y = torch.cat([y[..., :n] + self.tail, y[..., n:]], dim=-1)
        done = x.shape[-1] * self.stride
        self.tail = y[..., done:]
        y = y[..., :done]
        return y if c.bias is None else y + c.bias[:, None]


class LSTM(StreamingLayer):
    """nn.LSTM (sequence-first) over a (B, C, t) signal, carrying (h, c) across chunks.
    `skip` adds the input to the output, as encodec's SLSTM does."""

    def __init__(self, lstm: nn.LSTM, skip: bool = False):
        if lstm.batch_first or lstm.bidirectional:
            raise NotImplementedError("streaming supports unidirectional, sequence-first LSTMs")
        self.lstm, self.skip = lstm, skip
        self.reset()

    def reset(self):
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    CELL_MAX_STEPS = 16  # below this, step cells: the fused (oneDNN) LSTM costs ~1 ms per call on a CPU

    def _cells(self, xs: torch.Tensor) -> torch.Tensor:
        """The same recurrence as nn.LSTM, one torch.lstm_cell per layer and step."""
        m, (b, n) = self.lstm, xs.shape[1:3]
        if self.state is None:
            zero = xs.new_zeros(m.num_layers, b, m.hidden_size)
            self.state = (zero, zero)
        hs, cs = list(self.state[0].unbind(0)), list(self.state[1].unbind(0))
        outs = []
        for x_t in xs:  # (B, C)
            for layer in range(m.num_layers):
                hs[layer], cs[layer] = torch.lstm_cell(
                    x_t, (hs[layer], cs[layer]), getattr(m, f"weight_ih_l{layer}"), getattr(m, f"weight_hh_l{layer}"),
                    getattr(m, f"bias_ih_l{layer}", None), getattr(m, f"bias_hh_l{layer}", None))
                x_t = hs[layer]
            outs.append(x_t)
        self.state = (torch.stack(hs), torch.stack(cs))
        return torch.stack(outs)  # (t, B, H)

    def step(self, x, final=False):
        if x.shape[-1] == 0:
            return _empty(x, self.lstm.hidden_size)
        xs = x.permute(2, 0, 1)  # (t, B, C)
        if xs.shape[0] < self.CELL_MAX_STEPS and self.lstm.proj_size == 0 and self.lstm.bias:
            y = self._cells(xs)
        else:
            y, self.state = self.lstm(xs, self.state)
        if self.skip:
            y = y + xs
        return y.permute(1, 2, 0)  # (B, C, t)


class Sequential(StreamingLayer):
    def __init__(self, layers: list[StreamingLayer]):
        self.layers = layers

    def reset(self):
        for layer in self.layers:
            layer.reset()

    def step(self, x, final=False):
        for layer in self.layers:
            x = layer.step(x, final)
        return x


class Residual(StreamingLayer):
    """shortcut(x) + block(x). The branches may emit different lengths while one of them waits for
    its first samples, so the part only one branch has produced waits here for the other."""

    def __init__(self, shortcut: StreamingLayer, block: StreamingLayer):
        self.shortcut, self.block = shortcut, block
        self.reset()

    def reset(self):
        self.shortcut.reset()
        self.block.reset()
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, x, final=False):
        a, b = self.shortcut.step(x, final), self.block.step(x, final)
        if self.pending is not None:
            a, b = torch.cat([self.pending[0], a], -1), torch.cat([self.pending[1], b], -1)
        n = min(a.shape[-1], b.shape[-1])
        self.pending = (a[..., n:], b[..., n:]) if a.shape[-1] != b.shape[-1] else None
        return a[..., :n] + b[..., :n]
