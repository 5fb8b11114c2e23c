"""Fused GPU inference of the photo-D networks: one Triton kernel per call.

The cuBLAS path of :class:`photodist.nn.PhotoDNetwork` runs one matrix product and one
activation kernel per layer, and every (rows x width) activation goes through device memory.
Here each program takes a block of rows, runs both networks' layers in registers and writes
only the outputs, so device memory sees the inputs once and the outputs once. Matrix products
use the tensor cores in the ``tf32x3`` mode (three TF32 products, float32 accuracy).

Weights are zero-padded to a common power-of-two width; padded units never reach an output
because the rows of the next layer that read them are zero. Used only where Triton and CUDA
are present, the widths fit (:data:`MAX_WIDTH`) and every activation has a fused form; the
caller checks the kernel against the cuBLAS path on a probe before using it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU-only installs lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

#: Activation codes of the fused kernel (``softmax`` mixes units, so it has none).
ACTIVATION_CODES: dict[str | None, int] = {
    None: 0,
    "linear": 0,
    "relu": 1,
    "gelu": 2,
    "sigmoid": 3,
    "softsign": 4,
    "tanh": 5,
    "elu": 6,
    "selu": 7,
    "swish": 8,
    "hard_sigmoid": 9,
    "softplus": 10,
}
#: Widest layer (after padding to a power of two) that the kernel keeps in registers.
MAX_WIDTH = 128
#: Most hidden layers per network (4 bits of the activation word per layer).
MAX_LAYERS = 15
#: Rows per program, warps per program and the precision of the matrix products
#: (``"tf32x3"``: tensor cores at float32 accuracy). Timed in ``benchmarks/bench_nn.py``.
BLOCK_ROWS = 128
NUM_WARPS = 4
PRECISION = "tf32x3"
#: Set to False to keep the layer-by-layer cuBLAS path (e.g. to compare the two).
ENABLED = True

#: A folded dense layer: weights (in, out), bias (out,), activation name (None: linear).
Layer = tuple[np.ndarray, np.ndarray, str | None]


def available() -> bool:
    """Whether Triton is importable, enabled and a CUDA device is present."""
    return ENABLED and triton is not None and torch.cuda.is_available()


def supports(primary: Sequence[Layer], secondary: Sequence[Layer]) -> bool:
    """Whether the fused kernel can run these folded networks (widths, depth, activations)."""
    for net in (primary, secondary):
        hidden = net[:-1]
        if len(hidden) != len(primary) - 1 or not 1 <= len(hidden) <= MAX_LAYERS:
            return False
        if any(name not in ACTIVATION_CODES for _, _, name in hidden):
            return False
        if _padded_width(net) > MAX_WIDTH:
            return False
    return True


def _padded(size: int) -> int:
    """The power of two >= ``size``, at least 16 (the smallest matrix-product tile)."""
    return max(16, 1 << (size - 1).bit_length())


def _padded_width(net: Sequence[Layer]) -> int:
    return _padded(max(max(w.shape) for w, _, _ in net[:-1]))


class FusedNetworks:
    """Both folded networks as padded device buffers for :func:`_fused_kernel`.

    Parameters
    ----------
    primary, secondary
        Folded dense layers ``(W[in, out], b, activation)``; the last layer is the linear
        head: (mean, raw sigma) per parameter for the primary, raw sigma for the secondary.
    sigma_nn_scale, sigma_bayes_scale
        Scales applied after the softplus of the raw sigmas.
    device
        A CUDA device.
    """

    def __init__(
        self,
        primary: Sequence[Layer],
        secondary: Sequence[Layer],
        sigma_nn_scale: np.ndarray,
        sigma_bayes_scale: np.ndarray,
        device: torch.device,
    ) -> None:
        if not supports(primary, secondary) or len(sigma_nn_scale) != 3:
            raise ValueError("these networks have no fused form")
        self.width = max(_padded_width(primary), _padded_width(secondary))
        self.n_layers = len(primary) - 1
        buffers = [self._pack(net, device) for net in (primary, secondary)]
        (self.w1, self.b1, self.h1, self.c1, self.act1) = buffers[0]
        (self.w2, self.b2, self.h2, self.c2, self.act2) = buffers[1]
        scales = np.concatenate([sigma_nn_scale, sigma_bayes_scale]).astype(np.float32)
        self.scales = torch.from_numpy(scales).to(device)

    def _pack(
        self, net: Sequence[Layer], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        p = self.width
        hidden, (w_head, b_head, _) = net[:-1], net[-1]
        weights = np.zeros((len(hidden), p, p), dtype=np.float32)
        biases = np.zeros((len(hidden), p), dtype=np.float32)
        word = 0
        for i, (w, b, name) in enumerate(hidden):
            weights[i, : w.shape[0], : w.shape[1]] = w
            biases[i, : b.size] = b
            word |= ACTIVATION_CODES[name] << (4 * i)
        head = np.zeros((w_head.shape[1], p), dtype=np.float32)
        head[:, : w_head.shape[0]] = w_head.T

        def to_dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

        return to_dev(weights), to_dev(biases), to_dev(head), to_dev(b_head), word

    def run(self, x: torch.Tensor, dest: torch.Tensor, block_rows: int | None = None) -> None:
        """Write the outputs of rows ``x`` (n, n_inputs), float32, into ``dest`` (14, n);
        ``block_rows`` rows per program (default :data:`BLOCK_ROWS`)."""
        block_rows = int(block_rows or BLOCK_ROWS)
        n, n_inputs = x.shape
        if n == 0:
            return
        grid = (math.ceil(n / block_rows),)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _fused_kernel[grid](
                x,
                dest,
                n,
                x.stride(0),
                dest.stride(0),
                self.w1,
                self.b1,
                self.h1,
                self.c1,
                self.w2,
                self.b2,
                self.h2,
                self.c2,
                self.scales,
                N_INPUTS=n_inputs,
                WIDTH=self.width,
                N_LAYERS=self.n_layers,
                ACT1=self.act1,
                ACT2=self.act2,
                IN_PAD=_padded(n_inputs),
                PRECISION=PRECISION,
                BLOCK=block_rows,
                num_warps=NUM_WARPS,
            )


if triton is not None:

    @triton.jit
    def _activate(h, code: tl.constexpr):
        if code == 1:
            h = tl.maximum(h, 0.0)
        elif code == 2:
            h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
        elif code == 3:
            h = tl.sigmoid(h)
        elif code == 4:
            h = h / (1.0 + tl.abs(h))
        elif code == 5:
            h = 2.0 * tl.sigmoid(2.0 * h) - 1.0
        elif code == 6:
            h = tl.where(h > 0.0, h, tl.exp(tl.minimum(h, 0.0)) - 1.0)
        elif code == 7:
            neg = 1.6732632423543772 * (tl.exp(tl.minimum(h, 0.0)) - 1.0)  # SELU alpha
            h = 1.0507009873554805 * tl.where(h > 0.0, h, neg)  # SELU scale
        elif code == 8:
            h = h * tl.sigmoid(h)
        elif code == 9:
            h = tl.minimum(tl.maximum(h / 6.0 + 0.5, 0.0), 1.0)
        elif code == 10:
            h = _softplus(h)
        return h

    @triton.jit
    def _softplus(h):
        return tl.maximum(h, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(h)))

    @triton.jit
    def _body(
        x,
        w_ptr,
        b_ptr,
        IN_PAD: tl.constexpr,
        WIDTH: tl.constexpr,
        N_LAYERS: tl.constexpr,
        ACTS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        k = tl.arange(0, WIDTH)
        k_in = tl.arange(0, IN_PAD)
        # the first layer reads only the IN_PAD input rows of its padded weights
        w = tl.load(w_ptr + k_in[:, None] * WIDTH + k[None, :])
        h = tl.dot(x, w, input_precision=PRECISION) + tl.load(b_ptr + k)[None, :]
        h = _activate(h, ACTS & 15)
        for layer in tl.static_range(1, N_LAYERS):
            offs = layer * WIDTH * WIDTH + k[:, None] * WIDTH + k[None, :]
            w = tl.load(w_ptr + offs)
            b = tl.load(b_ptr + layer * WIDTH + k)
            h = tl.dot(h, w, input_precision=PRECISION) + b[None, :]
            h = _activate(h, (ACTS >> (4 * layer)) & 15)
        return h

    @triton.jit
    def _head(h, head_ptr, bias_ptr, j: tl.constexpr, WIDTH: tl.constexpr):
        w = tl.load(head_ptr + j * WIDTH + tl.arange(0, WIDTH))
        return tl.sum(h * w[None, :], axis=1) + tl.load(bias_ptr + j)

    @triton.jit
    def _fused_kernel(
        x_ptr,
        out_ptr,
        n,
        x_stride,
        out_stride,
        w1_ptr,
        b1_ptr,
        h1_ptr,
        c1_ptr,
        w2_ptr,
        b2_ptr,
        h2_ptr,
        c2_ptr,
        scale_ptr,
        N_INPUTS: tl.constexpr,
        WIDTH: tl.constexpr,
        N_LAYERS: tl.constexpr,
        ACT1: tl.constexpr,
        ACT2: tl.constexpr,
        IN_PAD: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = rows < n
        # Triton types an int argument below 2**31 as int32, so k * out_stride would wrap
        # for n above ~165 million rows: the output's row offsets are taken in int64
        out_stride = out_stride.to(tl.int64)
        cols = tl.arange(0, IN_PAD)
        x = tl.load(
            x_ptr + rows[:, None] * x_stride + cols[None, :],
            mask=live[:, None] & (cols[None, :] < N_INPUTS),
            other=0.0,
        )
        h1 = _body(x, w1_ptr, b1_ptr, IN_PAD, WIDTH, N_LAYERS, ACT1, PRECISION)
        h2 = _body(x, w2_ptr, b2_ptr, IN_PAD, WIDTH, N_LAYERS, ACT2, PRECISION)
        mr_mean, mr_sigma = _parameter(
            h1,
            h2,
            h1_ptr,
            c1_ptr,
            h2_ptr,
            c2_ptr,
            scale_ptr,
            out_ptr,
            out_stride,
            rows,
            live,
            0,
            WIDTH,
        )
        ar_mean, ar_sigma = _parameter(
            h1,
            h2,
            h1_ptr,
            c1_ptr,
            h2_ptr,
            c2_ptr,
            scale_ptr,
            out_ptr,
            out_stride,
            rows,
            live,
            1,
            WIDTH,
        )
        _parameter(
            h1,
            h2,
            h1_ptr,
            c1_ptr,
            h2_ptr,
            c2_ptr,
            scale_ptr,
            out_ptr,
            out_stride,
            rows,
            live,
            2,
            WIDTH,
        )
        tl.store(out_ptr + 12 * out_stride + rows, mr_mean + ar_mean, mask=live)
        qr_sigma = tl.sqrt(mr_sigma * mr_sigma + ar_sigma * ar_sigma)
        tl.store(out_ptr + 13 * out_stride + rows, qr_sigma, mask=live)

    @triton.jit
    def _parameter(
        h1,
        h2,
        h1_ptr,
        c1_ptr,
        h2_ptr,
        c2_ptr,
        scale_ptr,
        out_ptr,
        out_stride,
        rows,
        live,
        p: tl.constexpr,
        WIDTH: tl.constexpr,
    ):
        """Store mean, sigma, sigma_nn and sigma_bayes of parameter ``p`` (rows 4p .. 4p + 3)."""
        mean = _head(h1, h1_ptr, c1_ptr, p, WIDTH)
        sigma_nn = _softplus(_head(h1, h1_ptr, c1_ptr, p + 3, WIDTH)) * tl.load(scale_ptr + p)
        sigma_b = _softplus(_head(h2, h2_ptr, c2_ptr, p, WIDTH)) * tl.load(scale_ptr + 3 + p)
        sigma = tl.sqrt(sigma_nn * sigma_nn + sigma_b * sigma_b)
        tl.store(out_ptr + (4 * p) * out_stride + rows, mean, mask=live)
        tl.store(out_ptr + (4 * p + 1) * out_stride + rows, sigma, mask=live)
        tl.store(out_ptr + (4 * p + 2) * out_stride + rows, sigma_nn, mask=live)
        tl.store(out_ptr + (4 * p + 3) * out_stride + rows, sigma_b, mask=live)
        return mean, sigma
