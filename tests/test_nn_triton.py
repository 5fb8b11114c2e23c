"""The fused Triton inference kernel against an independent float64 forward pass.

Runs on a CUDA device, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import special

from photodist import nn_triton

pytestmark = pytest.mark.skipif(
    nn_triton.triton is None
    or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs Triton and a CUDA device (or TRITON_INTERPRET=1)",
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

NUMPY_ACTIVATIONS = {
    "linear": lambda h: h,
    "relu": lambda h: np.maximum(h, 0.0),
    "gelu": lambda h: 0.5 * h * (1.0 + special.erf(h / np.sqrt(2.0))),
    "sigmoid": special.expit,
    "softsign": lambda h: h / (1.0 + np.abs(h)),
    "tanh": np.tanh,
    "elu": lambda h: np.where(h > 0, h, np.expm1(np.minimum(h, 0.0))),
    "selu": lambda h: (
        1.0507009873554805 * np.where(h > 0, h, 1.6732632423543772 * np.expm1(np.minimum(h, 0.0)))
    ),
    "swish": lambda h: h * special.expit(h),
    "hard_sigmoid": lambda h: np.clip(h / 6.0 + 0.5, 0.0, 1.0),
    "softplus": lambda h: np.logaddexp(0.0, h),
}


def _network(rng, widths, activations, n_out):
    layers = []
    for (n_in, n_hidden), name in zip(pairwise(widths), activations, strict=True):
        layers.append(
            (rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_hidden)), rng.normal(0, 0.3, n_hidden), name)
        )
    layers.append(
        (
            rng.normal(0, 1 / np.sqrt(widths[-1]), (widths[-1], n_out)),
            rng.normal(0, 0.3, n_out),
            None,
        )
    )
    return layers


def _forward(x, layers):
    h = x
    for w, b, name in layers[:-1]:
        h = NUMPY_ACTIVATIONS[name](h @ w + b)
    return h @ layers[-1][0] + layers[-1][1]


def _reference(x, primary, secondary, nn_scale, bayes_scale):
    """The 14 output rows of ``PhotoDNetwork.predict`` in float64."""
    p1, p2 = _forward(x, primary), _forward(x, secondary)
    sigma_nn = np.logaddexp(0.0, p1[:, 3:]) * nn_scale
    sigma_b = np.logaddexp(0.0, p2) * bayes_scale
    sigma = np.hypot(sigma_nn, sigma_b)
    rows = []
    for p in range(3):
        rows += [p1[:, p], sigma[:, p], sigma_nn[:, p], sigma_b[:, p]]
    rows += [p1[:, 0] + p1[:, 1], np.hypot(sigma[:, 0], sigma[:, 1])]
    return np.array(rows)


@pytest.mark.parametrize(
    "activations",
    [
        ("gelu", "softsign", "softsign", "sigmoid", "gelu"),  # the paper's default body
        ("relu", "tanh", "elu", "selu", "swish"),
        ("hard_sigmoid", "softplus", "linear", "gelu", "tanh"),
    ],
)
def test_fused_kernel_matches_float64_forward_pass(activations) -> None:
    rng = np.random.default_rng(len(activations[0]))
    widths = (10, 45, 45, 42, 33, 36)
    primary = _network(rng, widths, activations, 6)
    secondary = _network(rng, widths, activations[::-1], 3)
    nn_scale, bayes_scale = np.array([0.1, 0.02, 0.1]), np.array([0.3, 0.05, 0.2])
    x = rng.normal(0, 2, (1000, 10))
    fused = nn_triton.FusedNetworks(primary, secondary, nn_scale, bayes_scale, DEVICE)
    dest = torch.full((14, len(x)), float("nan"), device=DEVICE)
    fused.run(torch.as_tensor(x, dtype=torch.float32, device=DEVICE), dest)
    expected = _reference(x, primary, secondary, nn_scale, bayes_scale)
    np.testing.assert_allclose(dest.cpu().numpy(), expected, rtol=2e-4, atol=2e-4)


def test_unsupported_networks_are_refused() -> None:
    rng = np.random.default_rng(0)
    wide = _network(rng, (10, 200, 36), ("relu", "relu"), 6)
    small = _network(rng, (10, 45, 36), ("relu", "relu"), 3)
    softmax = _network(rng, (10, 45, 36), ("softmax", "relu"), 6)
    assert nn_triton.supports(_network(rng, (10, 45, 36), ("relu", "relu"), 6), small)
    assert not nn_triton.supports(wide, small)
    assert not nn_triton.supports(softmax, small)
    with pytest.raises(ValueError, match="no fused form"):
        nn_triton.FusedNetworks(wide, small, np.ones(3), np.ones(3), DEVICE)
