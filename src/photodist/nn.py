"""Neural networks that emulate the Bayesian photo-D estimator.

A Bayesian estimator labels a subsample of stars with posterior means and standard deviations
of M_r, A_r and [Fe/H]; the networks here learn those labels and then predict every star
(Mrakovčić, Ivezić & Palaversa 2025, AJ 170, 72):

* the *moments network* predicts a mean mu and a width sigma_NN for each parameter and is
  trained with the moments loss of Jeffrey & Wandelt (2020);
* the *secondary network* (same hidden layers) predicts the Bayesian posterior width sigma_B.

The reported uncertainty is ``sqrt(sigma_NN**2 + sigma_B**2)``.

Training is deterministic for a given seed on the CPU: every optimisation run is executed with
single-threaded tensor operations (independent runs execute concurrently, in worker threads or
in Python subprocesses), so the weights do not depend on the number of threads. Inference folds
the input standardisation and any batch normalisation into the dense layers and, on the CPU,
runs each layer with its activation as one oneDNN primitive where the installed PyTorch
provides one (checked against the plain path before use). A fitted estimator is stored as one
safetensors file whose header carries the JSON metadata; loading never executes code.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save
from torch import nn

from photodist import __version__, nn_triton
from photodist.bands import BandSet, Photometry, get_band_set
from photodist.io import json_default, write_bytes_atomic

__all__ = [
    "ACTIVATIONS",
    "FLAG_KEYS",
    "FLOAT_KEYS",
    "OUTPUT_KEYS",
    "PARAMETERS",
    "ModelFileError",
    "NetworkSpec",
    "NotFittedError",
    "PhotoDNetwork",
    "moments_loss",
    "moments_loss_terms",
    "weighted_mse",
]

#: Estimated parameters, in the column order of the label arrays.
PARAMETERS: tuple[str, ...] = ("Mr", "Ar", "FeH")
#: Loss weights (the target precision of M_r, A_r and [Fe/H]); each term is divided by w**2.
DEFAULT_LOSS_WEIGHTS: tuple[float, float, float] = (0.1, 0.02, 0.1)
#: Activation names accepted in a :class:`NetworkSpec` (the hyper-parameter search space).
ACTIVATIONS: tuple[str, ...] = (
    "elu",
    "gelu",
    "hard_sigmoid",
    "linear",
    "relu",
    "selu",
    "sigmoid",
    "softmax",
    "softplus",
    "softsign",
    "swish",
    "tanh",
)
#: Floating-point columns returned by :meth:`PhotoDNetwork.predict`, in storage order.
FLOAT_KEYS: tuple[str, ...] = tuple(
    f"{p}_{suffix}" for p in PARAMETERS for suffix in ("mean", "sigma", "sigma_nn", "sigma_bayes")
) + ("Qr_mean", "Qr_sigma")
#: Boolean flag columns returned by :meth:`PhotoDNetwork.predict`.
FLAG_KEYS: tuple[str, ...] = ("out_of_domain", "invalid_input")
#: The dust-map input is standardised by at least this fraction of its mean: where a patch's
#: map hardly varies (it is only good to ~10 %), the input stays nearly constant instead of
#: being stretched to unit variance.
DUST_INPUT_SCALE_FRACTION = 0.1
OUTPUT_KEYS: tuple[str, ...] = FLOAT_KEYS + FLAG_KEYS

FORMAT_NAME = "photodist-nn"
FORMAT_VERSION = 1
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-7  # the Keras default used by the reference implementation
_BATCH_NORM_EPS = 1e-3
_LR_MIN_DELTA = 1e-4  # ReduceLROnPlateau: improvement needed to reset its patience counter
#: A validation loss above this multiple of the best undoes the epoch (``divergence_factor``),
#: and the learning rate is then multiplied by ROLLBACK_LR_FACTOR.
DEFAULT_DIVERGENCE_FACTOR = 3.0
ROLLBACK_LR_FACTOR = 0.5
_MAX_HEADER_BYTES = 100_000_000
_DEFAULT_CPU_CHUNK = 32768  # rows per chunk and CPU thread; measured fastest of 4k to 64k
_DEFAULT_DEVICE_CHUNK = 1 << 20
#: Training rows x epochs above which "auto" trains concurrent runs in subprocesses.
_PROCESS_WORK_THRESHOLD = 2_000_000
#: Error (mag) given to an unusable colour when it enters the networks (beyond the 1-mag limit
#: of a usable colour error, so the networks can tell "no information").
MISSING_COLOR_ERROR = 2.0
#: Training rows lacking a set of colours needed before the networks take stars without them.
MIN_MISSING_TRAINING_ROWS = 50
#: Fewest usable colours of a row the networks take (the Bayesian estimator's minimum).
MIN_USABLE_COLORS = 2


class ModelFileError(ValueError):
    """A file is not a readable photodist network (corrupted, truncated or another format)."""


class NotFittedError(RuntimeError):
    """The estimator has not been fitted (or loaded) yet."""


# ----------------------------------------------------------------------------------------------
# Network specification
# ----------------------------------------------------------------------------------------------


def _check_activation(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"activation must be a string, got {name!r}")
    key = name.strip().lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return key


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture of the hidden layers shared by the moments and secondary networks.

    Parameters
    ----------
    hidden
        Hidden layers from input to output as ``(units, activation)`` pairs; activations are
        names from :data:`ACTIVATIONS`.
    batch_norm
        Add batch normalisation after the activation of every hidden layer.
    """

    hidden: tuple[tuple[int, str], ...]
    batch_norm: bool = False

    def __post_init__(self) -> None:
        layers = []
        if isinstance(self.hidden, str | bytes) or not isinstance(self.hidden, Sequence):
            raise ValueError("hidden must be a sequence of (units, activation) pairs")
        for i, layer in enumerate(self.hidden):
            if isinstance(layer, Mapping):
                layer = (layer.get("units"), layer.get("activation"))
            if isinstance(layer, str | bytes) or not isinstance(layer, Sequence) or len(layer) != 2:
                raise ValueError(
                    f"hidden layer {i} must be a (units, activation) pair, got {layer!r}"
                )
            units, activation = layer
            if isinstance(units, bool) or not isinstance(units, int | np.integer) or units < 1:
                raise ValueError(
                    f"hidden layer {i}: units must be a positive integer, got {units!r}"
                )
            layers.append((int(units), _check_activation(activation)))
        if not layers:
            raise ValueError("a network needs at least one hidden layer")
        if not isinstance(self.batch_norm, bool | np.bool_):
            raise ValueError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        object.__setattr__(self, "hidden", tuple(layers))
        object.__setattr__(self, "batch_norm", bool(self.batch_norm))

    @classmethod
    def paper_default(cls, batch_norm: bool = False) -> NetworkSpec:
        """45 GELU, 45 Softsign, 42 Softsign, 33 Sigmoid, 36 GELU (Mrakovčić et al. 2025)."""
        return cls(
            ((45, "gelu"), (45, "softsign"), (42, "softsign"), (33, "sigmoid"), (36, "gelu")),
            batch_norm=batch_norm,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: ``{"hidden": [[units, activation], ...], "batch_norm": bool}``."""
        return {"hidden": [[u, a] for u, a in self.hidden], "batch_norm": self.batch_norm}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a network spec must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"hidden", "batch_norm"}
        if unknown:
            raise ValueError(f"unknown network-spec keys {sorted(unknown)}")
        if "hidden" not in data:
            raise ValueError("a network spec needs a 'hidden' list")
        return cls(data["hidden"], batch_norm=data.get("batch_norm", False))

    def to_json(self) -> str:
        """The spec as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> NetworkSpec:
        """Parse a JSON spec, e.g. ``{"hidden": [[45, "gelu"], [33, "tanh"]]}``."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"network spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _coerce_spec(spec: NetworkSpec | Mapping[str, Any] | str | None) -> NetworkSpec:
    if spec is None:
        return NetworkSpec.paper_default()
    if isinstance(spec, NetworkSpec):
        return spec
    if isinstance(spec, str | bytes):
        return NetworkSpec.from_json(spec)
    if isinstance(spec, Mapping):
        return NetworkSpec.from_dict(spec)
    raise TypeError(
        f"spec must be a NetworkSpec, a dict or a JSON string, got {type(spec).__name__}"
    )


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def moments_loss_terms(mu: torch.Tensor, sigma: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per-parameter moments loss, the mean over stars of ``d2 + (d2 - sigma**2)**2``.

    ``d2 = (theta - mu)**2`` (Jeffrey & Wandelt 2020). Inputs have shape (N, P); the result has
    shape (P,).
    """
    d2 = (theta - mu).square()
    return (d2 + (d2 - sigma.square()).square()).mean(dim=0)


def moments_loss(
    mu: torch.Tensor,
    sigma: torch.Tensor,
    theta: torch.Tensor,
    weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
) -> torch.Tensor:
    """Total moments loss ``sum_p L_p / w_p**2``.

    Parameters
    ----------
    mu, sigma
        Network means and widths, shape (N, P) with P = len(weights).
    theta
        Labels (Bayesian posterior means), shape (N, P).
    weights
        Target precision per parameter; default (0.1, 0.02, 0.1) for (M_r, A_r, [Fe/H]).
    """
    w = torch.as_tensor(weights, dtype=mu.dtype, device=mu.device)
    return (moments_loss_terms(mu, sigma, theta) / w.square()).sum()


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS
) -> torch.Tensor:
    """Mean squared error per parameter, divided by ``w_p**2`` and summed over parameters."""
    w = torch.as_tensor(weights, dtype=prediction.dtype, device=prediction.device)
    return ((prediction - target).square().mean(dim=0) / w.square()).sum()


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


class _SoftsignFunction(torch.autograd.Function):
    """x / (1 + |x|) with a single saved tensor and a two-operation backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        denom = x.abs().add_(1.0)
        ctx.save_for_backward(denom)
        return x / denom

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (denom,) = ctx.saved_tensors
        return grad / denom.square()


class _Softsign(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SoftsignFunction.apply(x)


_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "elu": nn.ELU,
    "gelu": nn.GELU,  # exact (erf) form, as Keras' default
    "hard_sigmoid": nn.Hardsigmoid,  # relu6(x + 3) / 6, as Keras 3
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=-1),
    "softplus": nn.Softplus,
    "softsign": _Softsign,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


class _Body(nn.Module):
    """Hidden layers (Linear -> activation [-> BatchNorm]) and a linear head.

    Built on the CPU whatever torch's default device (the weights are initialised there with
    a CPU generator); callers move the network to its device."""

    def __init__(self, n_inputs: int, spec: NetworkSpec, n_outputs: int) -> None:
        with torch.device("cpu"):
            self._build(n_inputs, spec, n_outputs)

    def _build(self, n_inputs: int, spec: NetworkSpec, n_outputs: int) -> None:
        super().__init__()
        self.activation_names = [a for _, a in spec.hidden]
        widths = [n_inputs] + [u for u, _ in spec.hidden]
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.activations = nn.ModuleList(_ACTIVATION_MODULES[a]() for a in self.activation_names)
        self.norms = (
            nn.ModuleList(nn.BatchNorm1d(u, eps=_BATCH_NORM_EPS) for u in widths[1:])
            if spec.batch_norm
            else None
        )
        self.head = nn.Linear(widths[-1], n_outputs)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        for i, (linear, activation) in enumerate(zip(self.linears, self.activations, strict=True)):
            x = activation(linear(x))
            if self.norms is not None:
                x = self.norms[i](x)
        return self.head(x)

    def init_weights(self, generator: torch.Generator) -> None:
        """Glorot-uniform weights and zero biases (the Keras defaults)."""
        with torch.no_grad():
            for linear in [*self.linears, self.head]:
                fan_out, fan_in = linear.weight.shape
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                linear.weight.uniform_(-limit, limit, generator=generator)
                linear.bias.zero_()


class _MomentsLossFunction(torch.autograd.Function):
    """Output transform and weighted moments loss from the raw head output, fused.

    ``mu = offset + scale * raw[:, :P]``, ``sigma = scale * softplus(raw[:, P:])``; the value
    equals ``moments_loss(mu, sigma, theta)`` and the gradient is analytic, which needs far
    fewer tensor operations than automatic differentiation of the same expression.
    """

    @staticmethod
    def forward(
        ctx: Any,
        raw: torch.Tensor,
        theta: torch.Tensor,
        offset: torch.Tensor,
        scale: torch.Tensor,
        inv_w2: torch.Tensor,
    ) -> torch.Tensor:
        p = theta.shape[1]
        pre = raw[:, p:]
        sigma = F.softplus(pre).mul_(scale)
        d = torch.addcmul(offset, raw[:, :p], scale).sub_(theta)  # mu - theta
        d2 = d.square()
        e = d2 - sigma.square()
        loss = (torch.addcmul(d2, e, e).mean(dim=0) * inv_w2).sum()
        ctx.save_for_backward(pre, d, e, sigma, scale, inv_w2)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pre, d, e, sigma, scale, inv_w2 = ctx.saved_tensors
        coef = (grad / d.shape[0]) * inv_w2 * scale
        # d/dmu [d2 + e^2] = 2 d (1 + 2 e); d/dsigma [e^2] = -4 e sigma
        grad_mu = e.mul(2.0).add_(1.0).mul_(d).mul_(2.0 * coef)
        grad_pre = torch.sigmoid(pre).mul_(e).mul_(sigma).mul_(-4.0 * coef)
        return torch.cat([grad_mu, grad_pre], dim=1), None, None, None, None


class _SigmaLossFunction(torch.autograd.Function):
    """``scale * softplus(raw)`` and its weighted mean squared error against the target, fused."""

    @staticmethod
    def forward(
        ctx: Any, raw: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, inv_w2: torch.Tensor
    ) -> torch.Tensor:
        r = F.softplus(raw).mul_(scale).sub_(target)
        loss = (r.square().mean(dim=0) * inv_w2).sum()
        ctx.save_for_backward(raw, r, scale, inv_w2)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        raw, r, scale, inv_w2 = ctx.saved_tensors
        coef = (grad * 2.0 / r.shape[0]) * inv_w2 * scale
        return torch.sigmoid(raw).mul_(r).mul_(coef), None, None, None


class _MomentsNet(_Body):
    """Standardised inputs -> (mu, sigma) for each parameter, in physical units."""

    def __init__(self, n_inputs: int, spec: NetworkSpec, n_params: int = len(PARAMETERS)) -> None:
        super().__init__(n_inputs, spec, 2 * n_params)
        self.n_params = n_params
        self.register_buffer("out_offset", torch.zeros(n_params, device="cpu"))
        self.register_buffer("out_scale", torch.ones(n_params, device="cpu"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw(x)
        mu = torch.addcmul(self.out_offset, raw[:, : self.n_params], self.out_scale)
        sigma = F.softplus(raw[:, self.n_params :]) * self.out_scale
        return mu, sigma

    def loss(self, raw: torch.Tensor, theta: torch.Tensor, inv_w2: torch.Tensor) -> torch.Tensor:
        """Weighted moments loss of the raw head output against the label means."""
        return _MomentsLossFunction.apply(raw, theta, self.out_offset, self.out_scale, inv_w2)


class _SigmaNet(_Body):
    """Standardised inputs -> Bayesian posterior width of each parameter (positive)."""

    def __init__(self, n_inputs: int, spec: NetworkSpec, n_params: int = len(PARAMETERS)) -> None:
        super().__init__(n_inputs, spec, n_params)
        self.register_buffer("out_scale", torch.ones(n_params, device="cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.raw(x)) * self.out_scale

    def loss(self, raw: torch.Tensor, target: torch.Tensor, inv_w2: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared error of the predicted widths against the label widths."""
        return _SigmaLossFunction.apply(raw, target, self.out_scale, inv_w2)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class _RunResult:
    """Outcome of one optimisation run."""

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    stopped_by_callback: bool = False
    rollbacks: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "stopped_by_callback": self.stopped_by_callback,
            "rollbacks": self.rollbacks,
            "seconds": round(self.seconds, 3),
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "learning_rate": self.learning_rate,
        }


class _FlatAdam:
    """Adam on one flat parameter buffer (the module parameters become views into it).

    One fused update of a single buffer costs a handful of tensor operations instead of several
    per parameter, which matters for networks this small.
    """

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.params = params
        total = sum(p.numel() for p in params)
        self.flat = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        offset = 0
        with torch.no_grad():
            for p in params:
                view = self.flat[offset : offset + p.numel()]
                view.copy_(p.reshape(-1))
                p.data = view.view_as(p)
                offset += p.numel()
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.lr = lr
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        beta1, beta2 = _ADAM_BETAS
        g = torch.cat([gr.reshape(-1) for gr in grads])
        self.steps += 1
        self.exp_avg.lerp_(g, 1.0 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = self.exp_avg_sq.sqrt().div_(math.sqrt(1.0 - beta2**self.steps)).add_(_ADAM_EPS)
        self.flat.addcdiv_(self.exp_avg, denom, value=-self.lr / (1.0 - beta1**self.steps))

    def reset_moments(self) -> None:
        """Forget the gradient history (as at the first step)."""
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        self.steps = 0

    def release(self) -> None:
        """Give every parameter its own storage again."""
        with torch.no_grad():
            for p in self.params:
                p.data = p.data.clone()


def _train_run(
    net: _MomentsNet | _SigmaNet,
    inv_w2: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    max_epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    lr_factor: float,
    lr_patience: int,
    seed: int,
    divergence_factor: float | None = None,
    callback: Callable[[int, float, float], bool] | None = None,
) -> _RunResult:
    """Mini-batch Adam with early stopping (best weights restored) and ReduceLROnPlateau.

    With ``divergence_factor``, an epoch whose validation loss exceeds that multiple of the
    best (a loss spike, or NaN) is undone: the best weights come back, the Adam moments are
    reset and the learning rate is halved (the epochs are listed in ``rollbacks``).
    After every epoch ``callback(epoch, val_loss, best_val_loss)``, when given, may return
    True to stop the run (e.g. a Hyperband pruning decision of the architecture search).
    """
    start = time.perf_counter()
    params = list(net.parameters())
    optimizer = _FlatAdam(params, learning_rate)
    buffers = list(net.buffers())
    best_flat = optimizer.flat.clone()
    best_buffers = [b.clone() for b in buffers]
    generator = torch.Generator().manual_seed(seed)
    n = x_train.shape[0]
    starts = list(range(0, n, batch_size))
    if net.norms is not None and len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()  # batch normalisation cannot train on a single-row batch
    sizes = torch.tensor(
        [min(batch_size, n - s) for s in starts], dtype=x_train.dtype, device=x_train.device
    )
    used = float(sizes.sum())
    result = _RunResult(math.inf, 0, 0, False, 0.0)
    best = math.inf
    plateau_best = math.inf
    since_best = 0
    since_plateau_best = 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=generator, device="cpu").to(x_train.device)
        xs, ys = x_train[perm], y_train[perm]
        losses: list[torch.Tensor] = []
        for s in starts:
            xb, yb = xs[s : s + batch_size], ys[s : s + batch_size]
            loss = net.loss(net.raw(xb), yb, inv_w2)
            grads = torch.autograd.grad(loss, params)
            optimizer.step(grads)
            losses.append(loss.detach())
        val = _evaluate(net, inv_w2, x_val, y_val)
        result.train_loss.append(float(torch.stack(losses) @ sizes) / used)
        result.val_loss.append(val)
        result.learning_rate.append(optimizer.lr)
        result.epochs_run = epoch
        improved = val < best  # NaN never counts as an improvement
        if improved:
            best = val
            since_best = 0
            result.best_val_loss, result.best_epoch = val, epoch
            best_flat.copy_(optimizer.flat)
            for saved, current in zip(best_buffers, buffers, strict=True):
                saved.copy_(current)
        else:
            since_best += 1
            if divergence_factor is not None and math.isfinite(best):
                if not val <= divergence_factor * best:  # a spike, or NaN
                    with torch.no_grad():
                        optimizer.flat.copy_(best_flat)
                        for saved, current in zip(best_buffers, buffers, strict=True):
                            current.copy_(saved)
                    optimizer.reset_moments()
                    optimizer.lr *= ROLLBACK_LR_FACTOR
                    result.rollbacks.append(epoch)
        if callback is not None and callback(epoch, val, best):
            result.stopped_by_callback = True
            break
        if not improved and since_best >= patience:
            result.stopped_early = True
            break
        if val < plateau_best - _LR_MIN_DELTA:
            plateau_best = val
            since_plateau_best = 0
        else:
            since_plateau_best += 1
            if since_plateau_best >= lr_patience:
                optimizer.lr *= lr_factor
                since_plateau_best = 0
    with torch.no_grad():
        optimizer.flat.copy_(best_flat)
        for saved, current in zip(best_buffers, buffers, strict=True):
            current.copy_(saved)
    optimizer.release()
    net.eval()
    result.seconds = time.perf_counter() - start
    return result


def train_moments_run(
    spec: NetworkSpec,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    out_offset: np.ndarray,
    out_scale: np.ndarray,
    loss_weights: Sequence[float],
    seed: int,
    max_epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    lr_factor: float,
    lr_patience: int,
    divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
    callback: Callable[[int, float, float], bool] | None = None,
) -> _RunResult:
    """One training run of a moments network, as :class:`PhotoDNetwork` does it, on one thread.

    Inputs must be standardised already and labels in physical units; ``out_offset`` and
    ``out_scale`` are the label means' training mean and standard deviation, ``seed`` the run
    seed (initialisation and shuffling). Returns the run's outcome (best validation loss, its
    epoch, the loss history, whether ``callback`` stopped it): used by the architecture search.
    """
    net = _MomentsNet(x_train.shape[1], spec)
    net.out_offset.copy_(torch.from_numpy(np.asarray(out_offset, dtype=np.float64)))
    net.out_scale.copy_(torch.from_numpy(np.asarray(out_scale, dtype=np.float64)))
    net.init_weights(torch.Generator().manual_seed(int(seed)))
    inv_w2 = torch.tensor(1.0 / np.square(np.asarray(loss_weights, float)), device="cpu").float()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    with _torch_threads(1):
        return _train_run(
            net,
            inv_w2,
            tensor(x_train),
            tensor(y_train),
            tensor(x_val),
            tensor(y_val),
            max_epochs=int(max_epochs),
            patience=int(patience),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            lr_factor=float(lr_factor),
            lr_patience=int(lr_patience),
            seed=int(seed),
            divergence_factor=divergence_factor,
            callback=callback,
        )


@torch.no_grad()
def _evaluate(
    net: _MomentsNet | _SigmaNet,
    inv_w2: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 65536,
) -> float:
    """Loss over a whole set, in chunks (the losses are means over stars)."""
    net.eval()
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        total += float(net.loss(net.raw(xb), y[s : s + chunk], inv_w2)) * xb.shape[0]
    return total / x.shape[0]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily set the number of intra-op threads of the calling thread."""
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def resolve_device(device: str | torch.device, present: bool = True) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device.

    ``present`` False checks the name alone, not that this machine has the device (for
    devices used on other machines)."""
    if isinstance(device, str):
        device = device.strip().lower()
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from exc
    if resolved.type not in {"cpu", "cuda"}:
        raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu' or 'cuda'")
    if resolved.type == "cuda" and present:
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(resolved)!r} requested but no CUDA device is available")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(resolved)!r} requested but this machine has {count} CUDA "
                f"device(s): use 'cuda' or 'cuda:0' to 'cuda:{count - 1}'"
            )
    return resolved


def derive_seeds(seed: int | None, n: int) -> tuple[int, list[int]]:
    """Entropy actually used and ``n`` independent 63-bit seeds."""
    sequence = np.random.SeedSequence(seed)
    children = sequence.spawn(n)
    seeds = [int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for c in children]
    return int(sequence.entropy), seeds


def _new_net(kind: str, n_inputs: int, spec: NetworkSpec) -> _MomentsNet | _SigmaNet:
    return _MomentsNet(n_inputs, spec) if kind == "moments" else _SigmaNet(n_inputs, spec)


def _run_job(
    net: _MomentsNet | _SigmaNet, job: Mapping[str, Any], shared: Mapping[str, Any]
) -> _RunResult:
    """Train ``net`` in place on one thread."""
    y_train, y_val = shared["targets"][job["kind"]]
    with _torch_threads(1):
        return _train_run(
            net,
            shared["inv_w2"],
            shared["x_train"],
            y_train,
            shared["x_val"],
            y_val,
            max_epochs=job["max_epochs"],
            seed=job["seed"],
            **shared["options"],
        )


class _SubprocessError(RuntimeError):
    """A training subprocess could not run or failed."""


# The child keeps stdout for the pickled result: anything printed goes to stderr instead.
_CHILD_CODE = (
    "import sys\n"
    "out = sys.stdout.buffer\n"
    "sys.stdout = sys.stderr\n"
    "from photodist.nn import _child_main\n"
    "_child_main(sys.stdin.buffer, out)\n"
)


def _child_main(stdin: Any, stdout: Any) -> None:
    """Entry point of a training subprocess: train the jobs read from stdin."""
    torch.set_num_threads(1)
    payload = pickle.load(stdin)
    spec = NetworkSpec.from_dict(payload["spec"])
    done = []
    for job, state in payload["jobs"]:
        net = _new_net(job["kind"], payload["n_inputs"], spec)
        net.load_state_dict(state)
        result = _run_job(net, job, payload["shared"])
        done.append((net.state_dict(), result))
    pickle.dump(done, stdout, protocol=pickle.HIGHEST_PROTOCOL)
    stdout.flush()


def _run_in_subprocess(payload: dict[str, Any]) -> list[tuple[dict[str, torch.Tensor], _RunResult]]:
    """Train jobs in a fresh interpreter (the payload is our own data, exchanged over pipes)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE],
            input=pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL),
            capture_output=True,
            env=env,
            check=False,
        )
    except OSError as exc:
        raise _SubprocessError(str(exc)) from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise _SubprocessError(f"exit status {proc.returncode}: {' / '.join(tail)}")
    try:
        return pickle.loads(proc.stdout)
    except Exception as exc:  # a truncated or garbled result
        raise _SubprocessError(f"unreadable result ({exc})") from exc


def _run_jobs(
    nets: list[_MomentsNet | _SigmaNet],
    jobs: list[dict[str, Any]],
    shared: dict[str, Any],
    spec: NetworkSpec,
    workers: int,
    mode: str,
) -> list[_RunResult]:
    """Train ``nets[i]`` on ``jobs[i]``, spread over ``workers`` threads or processes."""
    results: list[_RunResult | None] = [None] * len(jobs)
    if mode == "serial":
        return [_run_job(net, job, shared) for net, job in zip(nets, jobs, strict=True)]
    if mode == "threads":
        # the calling thread drops to one intra-op thread first, so that the workers inherit it
        with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_run_job, nets, jobs, [shared] * len(jobs)))
    groups = [list(range(len(jobs)))[w::workers] for w in range(workers)]
    n_inputs = shared["x_train"].shape[1]
    with ThreadPoolExecutor(max_workers=workers - 1) as pool:
        futures = [
            pool.submit(
                _run_in_subprocess,
                {
                    "spec": spec.to_dict(),
                    "n_inputs": n_inputs,
                    "shared": shared,
                    "jobs": [(jobs[i], nets[i].state_dict()) for i in group],
                },
            )
            for group in groups[1:]
        ]
        for i in groups[0]:
            results[i] = _run_job(nets[i], jobs[i], shared)
        for group, future in zip(groups[1:], futures, strict=True):
            try:
                done = future.result()
            except _SubprocessError as exc:
                warnings.warn(
                    f"training subprocess failed ({exc}); training in this process instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
                for i in group:
                    results[i] = _run_job(nets[i], jobs[i], shared)
                continue
            for i, (state, result) in zip(group, done, strict=True):
                nets[i].load_state_dict(state)
                results[i] = result
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------


def _fold_network(net: _Body, in_scale: np.ndarray, in_shift: np.ndarray) -> list[nn_triton.Layer]:
    """Dense layers ``(W[in, out], b, activation)`` of ``net`` with the input standardisation
    ``x * in_scale + in_shift`` and every batch normalisation folded into the weights."""
    scale, shift = in_scale.astype(np.float64), in_shift.astype(np.float64)
    layers: list[nn_triton.Layer] = []
    linears = [*net.linears, net.head]
    names: list[str | None] = [*net.activation_names, None]
    for i, (linear, name) in enumerate(zip(linears, names, strict=True)):
        w = linear.weight.detach().cpu().double().numpy().T
        b = linear.bias.detach().cpu().double().numpy()
        layers.append((scale[:, None] * w, b + shift @ w, name))
        if net.norms is not None and i < len(net.norms):
            norm = net.norms[i]
            var = norm.running_var.detach().cpu().double().numpy()
            mean = norm.running_mean.detach().cpu().double().numpy()
            gamma = norm.weight.detach().cpu().double().numpy()
            beta = norm.bias.detach().cpu().double().numpy()
            scale = gamma / np.sqrt(var + norm.eps)
            shift = beta - mean * scale
        else:
            scale = np.ones(w.shape[1])
            shift = np.zeros(w.shape[1])
    return layers


_INPLACE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], Any]] = {
    "elu": lambda h: F.elu(h, inplace=True),
    "gelu": lambda h: torch.ops.aten.gelu_(h),
    "hard_sigmoid": lambda h: F.hardsigmoid(h, inplace=True),
    "relu": torch.relu_,
    "selu": torch.selu_,
    "sigmoid": torch.sigmoid_,
    "softmax": lambda h: h.copy_(torch.softmax(h, dim=1)),
    "softplus": lambda h: h.copy_(F.softplus(h)),
    "softsign": lambda h: h.div_(h.abs().add_(1.0)),
    "swish": lambda h: F.silu(h, inplace=True),
    "tanh": torch.tanh_,
}
#: Activations that oneDNN applies inside the matrix product (``mkldnn::_linear_pointwise``).
_ONEDNN_ACTIVATIONS: dict[str, tuple[str, str]] = {
    "gelu": ("gelu", "none"),  # "none" selects the exact erf form
    "hard_sigmoid": ("hardsigmoid", ""),
    "relu": ("relu", ""),
    "sigmoid": ("sigmoid", ""),
    "swish": ("swish", ""),
    "tanh": ("tanh", ""),
}


def _activate_(h: torch.Tensor, name: str | None) -> torch.Tensor:
    """Apply an activation in place."""
    if name is not None and name != "linear":
        _INPLACE_ACTIVATIONS[name](h)
    return h


class _DenseLayer:
    """One folded dense layer on a device; ``fused`` layers run as one oneDNN primitive."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, activation: str | None) -> None:
        self.w = w  # (in, out)
        self.b = b
        self.w_out_in = w.t().contiguous()  # (out, in), the layout oneDNN expects
        self.activation = activation
        self.fused = False

    def reference(self, h: torch.Tensor) -> torch.Tensor:
        return _activate_(torch.addmm(self.b, h, self.w), self.activation)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.reference(h)
        attr, algorithm = _ONEDNN_ACTIVATIONS.get(self.activation or "", ("none", ""))
        out = torch.ops.mkldnn._linear_pointwise(h, self.w_out_in, self.b, attr, [], algorithm)
        if attr == "none":
            _activate_(out, self.activation)
        return out


def _try_onednn(layers: list[_DenseLayer], n_inputs: int) -> bool:
    """Switch the layers to fused oneDNN primitives if they exist and reproduce the reference."""
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    probe = torch.randn(257, n_inputs, generator=torch.Generator().manual_seed(0), device="cpu")
    probe = probe * 2.0
    try:
        with torch.inference_mode():
            for layer in layers:
                expected = layer.reference(probe.clone())
                layer.fused = True
                got = layer(probe.clone())
                if got.shape != expected.shape or not torch.allclose(
                    got, expected, rtol=1e-4, atol=1e-5
                ):
                    raise RuntimeError("fused layer disagrees with the reference")
                probe = expected
    except (RuntimeError, TypeError, ValueError):
        for layer in layers:
            layer.fused = False
        return False
    return True


@numba.njit(nogil=True, cache=True)
def _prepare_rows(x, fill, patterns, missing_error, low, high, rows, status):
    """One CPU chunk's network inputs in a single pass over its rows.

    Does what :meth:`PhotoDNetwork._fill_missing` and the domain test of
    :meth:`_InferencePlan.run` do with tensors: ``rows`` (float32) receives ``x`` with the
    unusable colours filled (colour ``fill``, error ``missing_error``) where the row's set of
    unusable colours is supported (``patterns``, indexed by its bit mask); ``status``
    receives 0 for a row inside the domain [``low``, ``high``], 1 for a row outside it and 2
    for a row with a non-finite input (its ``rows`` are zeroed). Feature columns: r, the n
    colours, r error, the n colour errors, then any others.
    """
    n_rows, n_cols = x.shape
    n_colors = fill.shape[0]
    for i in range(n_rows):
        code = 0
        for k in range(n_cols):
            rows[i, k] = x[i, k]
        for c in range(n_colors):
            if not (np.isfinite(rows[i, 1 + c]) and np.isfinite(rows[i, 2 + n_colors + c])):
                code |= 1 << c
        if code and patterns[code]:
            for c in range(n_colors):
                if code & (1 << c):
                    rows[i, 1 + c] = fill[c]
                    rows[i, 2 + n_colors + c] = missing_error
        inside = True
        finite = True
        for k in range(n_cols):
            value = rows[i, k]
            inside &= (value >= low[k]) & (value <= high[k])  # NaN fails both
            finite &= np.isfinite(value)
        if inside:
            status[i] = 0
        elif finite:
            status[i] = 1
        else:
            status[i] = 2
            rows[i, :] = 0.0


class _InferencePlan:
    """Both networks reduced to float32 dense layers on one device.

    ``run`` writes the float outputs as rows of a (len(FLOAT_KEYS), n) array, so that every
    output column of :meth:`PhotoDNetwork.predict` is a contiguous 1-D array.
    """

    def __init__(
        self,
        primary: list[nn_triton.Layer],
        secondary: list[nn_triton.Layer],
        sigma_nn_scale: np.ndarray,
        sigma_bayes_scale: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        device: torch.device,
    ) -> None:
        self.device = device

        def to_dev(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

        self.hidden = [
            [_DenseLayer(to_dev(w), to_dev(b), name) for w, b, name in net[:-1]]
            for net in (primary, secondary)
        ]
        # heads produce (outputs, rows) directly: rows of the result are contiguous
        self.heads = [
            (to_dev(net[-1][0].T), to_dev(net[-1][1][:, None])) for net in (primary, secondary)
        ]
        self.n_params = len(sigma_nn_scale)
        self.sigma_nn_scale = to_dev(sigma_nn_scale[:, None])
        self.sigma_bayes_scale = to_dev(sigma_bayes_scale[:, None])
        # round the domain limits outwards so that no training row is flagged after float32 rounding
        self.low = to_dev(np.nextafter(low.astype(np.float32), np.float32(-np.inf)))
        self.high = to_dev(np.nextafter(high.astype(np.float32), np.float32(np.inf)))
        self.onednn = device.type == "cpu" and all(_try_onednn(n, len(low)) for n in self.hidden)
        if not self.onednn:
            for layer in (layer for net in self.hidden for layer in net):
                layer.fused = False
        self.fused: nn_triton.FusedNetworks | None = None
        if device.type == "cuda" and nn_triton.available():
            self.fused = self._try_fused(
                primary, secondary, sigma_nn_scale, sigma_bayes_scale, len(low)
            )
        self.backend = (
            "triton" if self.fused else "onednn" if self.onednn else f"torch-{device.type}"
        )

    def _try_fused(
        self,
        primary: list[nn_triton.Layer],
        secondary: list[nn_triton.Layer],
        sigma_nn_scale: np.ndarray,
        sigma_bayes_scale: np.ndarray,
        n_inputs: int,
    ) -> nn_triton.FusedNetworks | None:
        """The fused Triton kernel if it exists for these networks and reproduces the
        layer-by-layer path on a probe; else None (with a warning if it failed)."""
        if not nn_triton.supports(primary, secondary):
            return None
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(4099, n_inputs, generator=generator, device="cpu")
        probe = (probe * 2.0).to(self.device)
        try:
            fused = nn_triton.FusedNetworks(
                primary, secondary, sigma_nn_scale, sigma_bayes_scale, self.device
            )
            with torch.inference_mode():
                expected = self.run(probe)[0]
                got = torch.full_like(expected, math.nan)
                fused.run(probe, got)
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
                worst = float((got - expected).abs().nan_to_num(math.inf).max())
                raise RuntimeError(f"fused kernel differs from the reference by {worst:.3g}")
        except Exception as exc:  # any compilation or launch failure keeps the cuBLAS path
            warnings.warn(f"fused GPU inference disabled: {exc}", RuntimeWarning, stacklevel=3)
            return None
        return fused

    def run(
        self, x: torch.Tensor, dest: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict rows ``x`` (n, n_inputs) into ``dest`` (len(FLOAT_KEYS), n).

        Returns ``dest`` and the indices of the out-of-domain and of the invalid rows.
        """
        if dest is None:
            dest = torch.empty(len(FLOAT_KEYS), x.shape[0], device=x.device)
        # NaN fails both comparisons, so one test finds invalid and out-of-domain rows
        inside = (x >= self.low).logical_and_(x <= self.high).all(dim=1)
        empty = torch.empty(0, dtype=torch.long, device=x.device)
        outside_rows, invalid_rows = empty, empty
        if not bool(inside.all()):
            suspect = torch.nonzero(~inside).squeeze(1)
            finite = torch.isfinite(x[suspect]).all(dim=1)
            outside_rows, invalid_rows = suspect[finite], suspect[~finite]
            if invalid_rows.numel():
                x = x.index_fill(0, invalid_rows, 0.0)
        self.forward(x, dest, invalid_rows)
        return dest, outside_rows, invalid_rows

    def forward(self, x: torch.Tensor, dest: torch.Tensor, invalid_rows: torch.Tensor) -> None:
        """Predict finite rows ``x`` into ``dest``; the ``invalid_rows`` of it become NaN."""
        if self.fused is not None:
            self.fused.run(x.contiguous(), dest)
            if invalid_rows.numel():
                dest.index_fill_(1, invalid_rows, math.nan)
            return
        heads = []
        for net, (w_head, b_head) in zip(self.hidden, self.heads, strict=True):
            h = x
            for layer in net:
                h = layer(h)
            heads.append(torch.addmm(b_head, w_head, h.t()))  # (outputs, n)
        primary, secondary = heads
        p = self.n_params
        mean, sigma, sigma_nn, sigma_bayes = (dest[i : 4 * p : 4] for i in range(4))
        mean.copy_(primary[:p])
        torch.mul(F.softplus(primary[p:]), self.sigma_nn_scale, out=sigma_nn)
        torch.mul(F.softplus(secondary), self.sigma_bayes_scale, out=sigma_bayes)
        torch.hypot(sigma_nn, sigma_bayes, out=sigma)
        torch.add(dest[0], dest[4], out=dest[4 * p])  # Q_r = M_r + A_r
        torch.hypot(dest[1], dest[5], out=dest[4 * p + 1])
        if invalid_rows.numel():
            dest.index_fill_(1, invalid_rows, math.nan)


# ----------------------------------------------------------------------------------------------
# Estimator
# ----------------------------------------------------------------------------------------------


def _as_2d_float(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "fiub":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric") from exc
    elif array.dtype.kind != "f":
        array = array.astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, columns), got shape {array.shape}")
    return array


def missing_patterns(missing: np.ndarray) -> np.ndarray:
    """Bit mask of each row's unusable colours (bit k: colour k) from an (N, n_colors) mask."""
    weights = np.left_shift(1, np.arange(missing.shape[1], dtype=np.int64))
    return missing.astype(np.int64) @ weights


def supported_patterns(pattern_counts: np.ndarray, n_colors: int) -> np.ndarray:
    """Which sets of unusable colours (indexed by bit mask) the networks fill: none missing,
    or a set that at least :data:`MIN_MISSING_TRAINING_ROWS` training rows lacked, leaving
    :data:`MIN_USABLE_COLORS` usable colours."""
    codes = np.arange(1 << n_colors)
    n_missing = np.array([bin(int(c)).count("1") for c in codes])
    ok = (np.asarray(pattern_counts) >= MIN_MISSING_TRAINING_ROWS) & (
        n_colors - n_missing >= MIN_USABLE_COLORS
    )
    ok[0] = True
    return ok


def _pattern_counts_of_colors(counts: np.ndarray) -> np.ndarray:
    """Pattern counts for a file saved before 0.3.4, which kept only each colour's count: a
    single missing colour gets its count (the networks then filled any set of supported
    colours; now only single ones, which is what such files were mostly trained on)."""
    n_colors = len(counts)
    out = np.zeros(1 << n_colors, dtype=np.int64)
    for k, count in enumerate(counts):
        out[1 << k] = count
    return out


def _fill_colors(x: torch.Tensor, fill: np.ndarray, patterns: np.ndarray) -> torch.Tensor:
    """``x`` (rows of features, any device) with its unusable colours set to ``fill`` and their
    errors to ``MISSING_COLOR_ERROR`` in the rows whose set of unusable colours ``patterns``
    supports (:func:`supported_patterns`); the others keep their non-finite inputs (so they
    are ``invalid_input``). ``x`` itself when nothing is filled."""
    if not bool(np.any(patterns[1:])):
        return x
    n_colors = len(fill)
    colors = x[:, 1 : 1 + n_colors]
    errors = x[:, 2 + n_colors : 2 + 2 * n_colors]
    missing = ~(colors.isfinite() & errors.isfinite())
    if not bool(missing.any()):
        return x
    weights = torch.tensor([1 << k for k in range(n_colors)], device=x.device)
    codes = (missing.long() * weights).sum(dim=1)
    missing &= torch.as_tensor(patterns, device=x.device)[codes][:, None]
    fill_values = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return torch.cat(
        [
            x[:, :1],
            torch.where(missing, fill_values, colors),
            x[:, 1 + n_colors : 2 + n_colors],
            torch.where(missing, MISSING_COLOR_ERROR, errors),
            x[:, 2 + 2 * n_colors :],  # the dust-map input, if any
        ],
        dim=1,
    )


def fill_missing_colors(
    x: np.ndarray, y_mean: np.ndarray, y_sigma: np.ndarray, n_colors: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fill the unusable colours of training rows as ``PhotoDNetwork(missing_colors=True).fit``.

    Among the labelled rows (finite labels, r and r error), the sets of colours lacked
    together by at least :data:`MIN_MISSING_TRAINING_ROWS` rows are "supported"
    (:func:`supported_patterns`): in a row lacking such a set the colours become the median
    of each colour with error :data:`MISSING_COLOR_ERROR`; a row lacking any other set keeps
    its non-finite inputs.

    Returns
    -------
    (filled, fill, counts, pattern_counts)
        ``x`` with those colours filled (float64), the medians, the labelled rows lacking each
        colour and the labelled rows lacking each set of colours (indexed by bit mask).
    """
    labelled = np.isfinite(y_mean).all(axis=1) & np.isfinite(y_sigma).all(axis=1)
    labelled &= np.isfinite(x[:, 0]) & np.isfinite(x[:, 1 + n_colors])
    missing = PhotoDNetwork._missing_mask(x, n_colors)
    counts = missing[labelled].sum(axis=0).astype(np.int64)
    pattern_counts = np.bincount(missing_patterns(missing[labelled]), minlength=1 << n_colors)
    colors = np.where(missing, np.nan, x[:, 1 : 1 + n_colors])[labelled]
    fill = np.zeros(n_colors)
    for k in range(n_colors):
        present = colors[:, k][np.isfinite(colors[:, k])]
        fill[k] = float(np.median(present)) if present.size else 0.0
    rows = torch.tensor(x, dtype=torch.float64, device="cpu")
    filled = _fill_colors(rows, fill, supported_patterns(pattern_counts, n_colors)).numpy()
    return filled, fill, counts, pattern_counts


class PhotoDNetwork:
    """Moments network plus secondary network emulating the Bayesian photo-D estimates.

    Parameters
    ----------
    band_set
        Band set of the input photometry (``"sdss"``: 10 inputs, ``"lsst"``: 12 inputs).
    spec
        Hidden-layer architecture (:class:`NetworkSpec`, its dict or JSON); None for
        :meth:`NetworkSpec.paper_default`.
    seed
        Seed of the split, initialisation and shuffling; the same seed gives bitwise identical
        weights on the CPU. None draws fresh entropy (recorded in the metadata).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    max_epochs, patience, batch_size, learning_rate
        Adam training of the moments network with early stopping after ``patience`` epochs
        without validation improvement (the best weights are restored).
    n_runs
        Complete training runs of the moments network; the lowest validation loss is kept.
    secondary_max_epochs
        Epoch limit of the (single) secondary-network run.
    validation_fraction
        Fraction of the usable labelled rows held out for validation.
    divergence_factor
        An epoch whose validation loss exceeds this multiple of the best so far (a loss spike;
        default 3) is undone: best weights restored, Adam moments reset, learning rate halved. None
        trains as the paper does, without this.
    lr_factor, lr_patience
        ReduceLROnPlateau: multiply the learning rate by ``lr_factor`` after ``lr_patience``
        epochs without validation improvement.
    loss_weights
        Target precision (M_r, A_r, [Fe/H]); loss terms are divided by their squares.
    n_threads
        CPU threads for training (concurrent runs) and inference; None uses
        ``torch.get_num_threads()``.
    predict_batch_size
        Rows per inference chunk; None: 32768 per CPU thread, 2**20 on a GPU.
    domain_margin
        Fraction of each input's training range added on both sides before a row is flagged
        ``out_of_domain``.
    parallel
        How independent training runs share the CPU threads: ``"threads"`` (in this process),
        ``"processes"`` (runs beyond the first go to Python subprocesses, which avoids
        contention for the interpreter lock) or ``"auto"`` (processes for large trainings).
        The weights are identical either way.
    missing_colors
        Take stars with unusable colours (NaN colour or error, e.g. no u detection): such a
        colour enters as the training median of that colour with error
        :data:`MISSING_COLOR_ERROR`, so the networks learn from the training stars that lack it
        what the Bayesian estimator does without it. At prediction, rows lacking a set of
        colours that fewer than :data:`MIN_MISSING_TRAINING_ROWS` training rows lacked
        together, or left with fewer than :data:`MIN_USABLE_COLORS` usable colours, are
        ``invalid_input`` (a star with only r, or only g - r, gets no network estimate).
        False: any NaN input is ``invalid_input``.
    dust_input
        One more input after the paper's: the star's dust-map A_r
        (``Photometry.features(dust=True)``). The Bayesian labels depend on it through the A_r
        prior, so where the map varies across a patch the networks can follow it. Rows without
        a map value are ``invalid_input``. False (default): the paper's inputs.
    """

    def __init__(
        self,
        band_set: str | BandSet = "lsst",
        spec: NetworkSpec | Mapping[str, Any] | str | None = None,
        seed: int | None = 0,
        device: str = "auto",
        max_epochs: int = 1024,
        patience: int = 100,
        batch_size: int = 1024,
        learning_rate: float = 1e-3,
        n_runs: int = 2,
        secondary_max_epochs: int = 256,
        validation_fraction: float = 0.25,
        lr_factor: float = 0.9,
        lr_patience: int = 10,
        divergence_factor: float | None = DEFAULT_DIVERGENCE_FACTOR,
        loss_weights: Sequence[float] = DEFAULT_LOSS_WEIGHTS,
        n_threads: int | None = None,
        predict_batch_size: int | None = None,
        domain_margin: float = 0.05,
        parallel: str = "auto",
        missing_colors: bool = True,
        dust_input: bool = False,
    ) -> None:
        self.band_set = band_set
        self.spec = spec
        self.seed = seed
        self.device = device
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.n_runs = n_runs
        self.secondary_max_epochs = secondary_max_epochs
        self.validation_fraction = validation_fraction
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.divergence_factor = divergence_factor
        self.loss_weights = loss_weights
        self.n_threads = n_threads
        self.predict_batch_size = predict_batch_size
        self.domain_margin = domain_margin
        self.parallel = parallel
        self.missing_colors = missing_colors
        self.dust_input = dust_input

    # -- sklearn-style parameter access ---------------------------------------------------------

    _PARAM_NAMES = (
        "band_set",
        "spec",
        "seed",
        "device",
        "max_epochs",
        "patience",
        "batch_size",
        "learning_rate",
        "n_runs",
        "secondary_max_epochs",
        "validation_fraction",
        "lr_factor",
        "lr_patience",
        "divergence_factor",
        "loss_weights",
        "n_threads",
        "predict_batch_size",
        "domain_margin",
        "parallel",
        "missing_colors",
        "dust_input",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def set_params(self, **params: Any) -> PhotoDNetwork:
        """Set constructor parameters; returns self."""
        for name, value in params.items():
            if name not in self._PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r}")
            setattr(self, name, value)
        self.__dict__.pop("_plans", None)  # e.g. domain_margin changes the inference plan
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"PhotoDNetwork({args})"

    # -- helpers -------------------------------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        for name in ("max_epochs", "patience", "batch_size", "n_runs", "lr_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        sec = self.secondary_max_epochs
        if isinstance(sec, bool) or not isinstance(sec, int | np.integer) or sec < 1:
            raise ValueError(f"secondary_max_epochs must be a positive integer, got {sec!r}")
        if not 0.0 < float(self.validation_fraction) < 1.0:
            raise ValueError("validation_fraction must be between 0 and 1")
        if not float(self.learning_rate) > 0.0:
            raise ValueError("learning_rate must be positive")
        if not 0.0 < float(self.lr_factor) <= 1.0:
            raise ValueError("lr_factor must be in (0, 1]")
        self._divergence_factor()
        weights = np.asarray(self.loss_weights, dtype=float)
        if weights.shape != (len(PARAMETERS),) or not np.all(weights > 0):
            raise ValueError(f"loss_weights must be {len(PARAMETERS)} positive numbers")
        if not 0.0 <= float(self.domain_margin) < math.inf:
            raise ValueError("domain_margin must be finite and non-negative")
        if self.predict_batch_size is not None:
            size = self.predict_batch_size
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise ValueError(f"predict_batch_size must be a positive integer, got {size!r}")
        if self.n_threads is not None:
            self._threads()

    def _divergence_factor(self) -> float | None:
        factor = self.divergence_factor
        if factor is None:
            return None
        if isinstance(factor, bool) or not float(factor) > 1.0:
            raise ValueError(f"divergence_factor must be None or a number > 1, got {factor!r}")
        return float(factor)

    def _threads(self) -> int:
        if self.n_threads is None:
            return max(1, torch.get_num_threads())
        if isinstance(self.n_threads, bool) or int(self.n_threads) < 1:
            raise ValueError(f"n_threads must be a positive integer, got {self.n_threads!r}")
        return int(self.n_threads)

    def _parallel_mode(self, workers: int, n_train: int) -> str:
        mode = str(self.parallel).lower()
        if mode not in {"auto", "threads", "processes"}:
            raise ValueError(f"parallel must be 'auto', 'threads' or 'processes', got {mode!r}")
        if workers < 2:
            return "serial"
        if mode == "auto":
            work = n_train * max(int(self.max_epochs), int(self.secondary_max_epochs))
            big = work >= _PROCESS_WORK_THRESHOLD
            mode = "processes" if big and sys.executable else "threads"
        return mode

    def _n_inputs(self, band_set: BandSet) -> int:
        """r, the colours, their errors and, with ``dust_input``, the dust-map A_r."""
        return 2 + 2 * band_set.n_colors + int(bool(self.dust_input))

    def _features(self, features: Any, band_set: BandSet) -> np.ndarray:
        if isinstance(features, Photometry):
            if features.band_set.name != band_set.name:
                raise ValueError(
                    f"photometry is in band set {features.band_set.name!r}, "
                    f"the network expects {band_set.name!r}"
                )
            features = features.features(dust=bool(self.dust_input))
        elif isinstance(features, pd.DataFrame):
            raise TypeError(
                "PhotoDNetwork takes a Photometry (photometry_from_frame(frame, band_set) reads "
                "one from a catalogue frame) or the network's input matrix, not a DataFrame"
            )
        array = _as_2d_float(features, "features")
        expected = self._n_inputs(band_set)
        if array.shape[1] != expected:
            dust = ", the dust-map A_r" if self.dust_input else ""
            raise ValueError(
                f"expected {expected} input columns for band set {band_set.name!r} "
                f"(r, {band_set.n_colors} colours, their errors{dust}), got {array.shape[1]}"
            )
        return array

    @staticmethod
    def _missing_mask(x: np.ndarray, n_colors: int) -> np.ndarray:
        """(N, n_colors): colour or its error not finite (features: r, colours, r error,
        colour errors)."""
        colors = x[:, 1 : 1 + n_colors]
        errors = x[:, 2 + n_colors : 2 + 2 * n_colors]
        return ~(np.isfinite(colors) & np.isfinite(errors))

    def _fill_missing(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (rows of features, any device) with the supported unusable colours filled:
        the training median with error ``MISSING_COLOR_ERROR`` (see ``missing_colors``); ``x``
        itself when there is nothing to fill."""
        fill = getattr(self, "color_fill_", None)
        if fill is None:
            return x
        return _fill_colors(x, fill, self.missing_patterns_)

    def _set_missing_support(self, n_colors: int) -> None:
        """``missing_patterns_`` (the sets of unusable colours filled, by bit mask) and
        ``missing_supported_`` (colours some filled set lacks) from the counts."""
        if getattr(self, "color_fill_", None) is None:
            self.missing_patterns_ = np.zeros(1 << n_colors, dtype=bool)
            self.missing_patterns_[0] = True
        else:
            self.missing_patterns_ = supported_patterns(self.missing_pattern_counts_, n_colors)
        codes = np.flatnonzero(self.missing_patterns_)
        self.missing_supported_ = np.array(
            [bool(np.any(codes & (1 << k))) for k in range(n_colors)], dtype=bool
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "primary_"):
            raise NotFittedError("this PhotoDNetwork is not fitted yet; call fit() or load()")

    # -- training ------------------------------------------------------------------------------

    def fit(
        self,
        features: np.ndarray | Photometry,
        label_mean: np.ndarray,
        label_sigma: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
    ) -> PhotoDNetwork:
        """Train both networks.

        Parameters
        ----------
        features
            Network inputs, shape (N, 2 + 2 n_colors) (see ``Photometry.features``).
        label_mean, label_sigma
            Bayesian posterior means and standard deviations, shape (N, 3), columns
            (M_r, A_r, [Fe/H]).
        metadata
            JSON-serialisable description of the labels (stored with the model).

        Rows with a non-finite input or label are excluded (counted in the metadata).
        """
        wall_start = time.perf_counter()
        self._check_hyperparameters()
        band_set = get_band_set(self.band_set)
        spec = _coerce_spec(self.spec)
        x = self._features(features, band_set)
        n_rows = x.shape[0]
        labels = []
        for name, values in (("label_mean", label_mean), ("label_sigma", label_sigma)):
            array = _as_2d_float(values, name).astype(np.float64)
            if array.shape != (n_rows, len(PARAMETERS)):
                raise ValueError(
                    f"{name} must have shape ({n_rows}, {len(PARAMETERS)}), got {array.shape}"
                )
            labels.append(array)
        y_mean, y_sigma = labels
        user_metadata = dict(metadata) if metadata is not None else {}
        try:
            json.dumps(user_metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc

        n_colors = band_set.n_colors
        self.color_fill_ = None
        if self.missing_colors:
            x, self.color_fill_, self.missing_counts_, self.missing_pattern_counts_ = (
                fill_missing_colors(x, y_mean, y_sigma, n_colors)
            )
        else:
            self.missing_counts_ = np.zeros(n_colors, dtype=np.int64)
            self.missing_pattern_counts_ = np.zeros(1 << n_colors, dtype=np.int64)
        self._set_missing_support(n_colors)
        usable = np.isfinite(x).all(axis=1) & np.isfinite(y_mean).all(axis=1)
        usable &= np.isfinite(y_sigma).all(axis=1)
        if np.any(y_sigma[usable] < 0):
            raise ValueError("label_sigma must be non-negative")
        rows = np.flatnonzero(usable)
        n_val = int(round(float(self.validation_fraction) * rows.size))
        n_train = rows.size - n_val
        if n_val < 1 or n_train < 2:
            raise ValueError(
                f"only {rows.size} usable rows (of {n_rows}); too few to train and validate"
            )
        entropy, seeds = derive_seeds(self.seed, 2 + int(self.n_runs))
        split = np.random.default_rng(seeds[0]).permutation(rows.size)
        val_rows, train_rows = rows[split[:n_val]], rows[split[n_val:]]

        x_train = x[train_rows].astype(np.float64)
        input_mean = x_train.mean(axis=0)
        input_std = x_train.std(axis=0)
        input_std = np.where(np.isfinite(input_std) & (input_std > 0), input_std, 1.0)
        if self.dust_input:  # map differences below its precision stay small inputs
            floor = max(DUST_INPUT_SCALE_FRACTION * abs(float(input_mean[-1])), 1e-3)
            input_std[-1] = max(float(input_std[-1]), floor)
        offset = y_mean[train_rows].mean(axis=0)
        scale = y_mean[train_rows].std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        sigma_scale = y_sigma[train_rows].mean(axis=0)
        sigma_scale = np.where(sigma_scale > 0, sigma_scale, 1.0)

        device = resolve_device(self.device)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

        xt = tensor((x_train - input_mean) / input_std)
        xv = tensor((x[val_rows] - input_mean) / input_std)
        n_inputs = x.shape[1]
        nets: list[_MomentsNet | _SigmaNet] = []
        for i in range(int(self.n_runs) + 1):
            net: _MomentsNet | _SigmaNet
            if i < int(self.n_runs):
                net = _MomentsNet(n_inputs, spec)
                net.out_offset.copy_(torch.from_numpy(offset))
                net.out_scale.copy_(torch.from_numpy(scale))
            else:
                net = _SigmaNet(n_inputs, spec)
                net.out_scale.copy_(torch.from_numpy(sigma_scale))
            net.init_weights(torch.Generator().manual_seed(seeds[1 + i]))
            nets.append(net.to(device))

        inv_w2 = torch.tensor(1.0 / np.square(np.asarray(self.loss_weights, float)), device=device)
        inv_w2 = inv_w2.to(torch.float32)

        shared = {
            "inv_w2": inv_w2,
            "x_train": xt,
            "x_val": xv,
            "targets": {
                "moments": (tensor(y_mean[train_rows]), tensor(y_mean[val_rows])),
                "sigma": (tensor(y_sigma[train_rows]), tensor(y_sigma[val_rows])),
            },
            "options": {
                "batch_size": int(self.batch_size),
                "learning_rate": float(self.learning_rate),
                "lr_factor": float(self.lr_factor),
                "lr_patience": int(self.lr_patience),
                "patience": int(self.patience),
                "divergence_factor": self._divergence_factor(),
            },
        }
        jobs = [
            {"kind": "moments", "max_epochs": int(self.max_epochs), "seed": seeds[1 + i]}
            for i in range(int(self.n_runs))
        ]
        jobs.append(
            {"kind": "sigma", "max_epochs": int(self.secondary_max_epochs), "seed": seeds[-1]}
        )
        n_threads = self._threads()
        workers = min(n_threads, len(jobs)) if device.type == "cpu" else 1
        mode = self._parallel_mode(workers, n_train)
        results = _run_jobs(nets, jobs, shared, spec, workers, mode)

        primary_results, secondary_result = results[:-1], results[-1]
        selected = int(np.argmin([r.best_val_loss for r in primary_results]))
        for name, result in (
            ("moments", primary_results[selected]),
            ("secondary", secondary_result),
        ):
            if not math.isfinite(result.best_val_loss):
                raise RuntimeError(
                    f"training of the {name} network diverged (no finite validation loss); "
                    "check the labels or lower the learning rate"
                )
        self.primary_ = nets[selected]
        self.secondary_ = nets[-1]
        self.spec_ = spec
        self.band_set_ = band_set.name
        self.n_features_in_ = n_inputs
        self.train_index_ = train_rows
        self.validation_index_ = val_rows
        self.input_mean_ = input_mean
        self.input_std_ = input_std
        all_x = x[rows]
        self.training_range_ = np.column_stack([all_x.min(axis=0), all_x.max(axis=0)])
        self.history_ = {
            "primary_runs": [r.as_dict() for r in primary_results],
            "selected_run": selected,
            "secondary": secondary_result.as_dict(),
        }
        self.training_metadata_ = {
            "n_rows": int(n_rows),
            "n_excluded_nonfinite": int(n_rows - rows.size),
            "n_missing_color_rows": [int(c) for c in self.missing_counts_],
            "n_train": int(n_train),
            "n_validation": int(n_val),
            "seed": None if self.seed is None else int(self.seed),
            "seed_entropy": str(entropy),
            "device": str(device),
            "n_threads": n_threads,
            "parallel": mode,
            "epochs_run": [r.epochs_run for r in primary_results],
            "best_epochs": [r.best_epoch for r in primary_results],
            "validation_losses": [r.best_val_loss for r in primary_results],
            "selected_run": selected,
            "validation_loss": primary_results[selected].best_val_loss,
            "secondary_epochs_run": secondary_result.epochs_run,
            "secondary_best_epoch": secondary_result.best_epoch,
            "secondary_validation_loss": secondary_result.best_val_loss,
            "fit_seconds": round(time.perf_counter() - wall_start, 3),
            "package_version": __version__,
            "torch_version": torch.__version__,
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "user": user_metadata,
        }
        self._plans: dict[str, _InferencePlan] = {}
        return self

    # -- inference -----------------------------------------------------------------------------

    def _plan(self, device: torch.device) -> _InferencePlan:
        key = str(device)
        plans = self.__dict__.setdefault("_plans", {})
        if key not in plans:
            scale = 1.0 / self.input_std_
            shift = -self.input_mean_ / self.input_std_
            primary = _fold_network(self.primary_, scale, shift)
            w, b, _ = primary[-1]
            p = len(PARAMETERS)
            out_scale = self.primary_.out_scale.detach().cpu().double().numpy()
            out_offset = self.primary_.out_offset.detach().cpu().double().numpy()
            w = w.copy()
            b = b.copy()
            w[:, :p] *= out_scale
            b[:p] = b[:p] * out_scale + out_offset
            primary[-1] = (w, b, None)
            secondary = _fold_network(self.secondary_, scale, shift)
            lo, hi = self.training_range_[:, 0], self.training_range_[:, 1]
            margin = float(self.domain_margin) * (hi - lo)
            plans[key] = _InferencePlan(
                primary,
                secondary,
                out_scale,
                self.secondary_.out_scale.detach().cpu().double().numpy(),
                lo - margin,
                hi + margin,
                device,
            )
        return plans[key]

    def predict(self, features: np.ndarray | Photometry) -> dict[str, np.ndarray]:
        """Predict every row.

        Returns
        -------
        dict
            For p in (Mr, Ar, FeH): ``{p}_mean``, ``{p}_sigma_nn``, ``{p}_sigma_bayes`` and
            ``{p}_sigma = sqrt(sigma_nn**2 + sigma_bayes**2)``; ``Qr_mean = Mr + Ar`` and
            ``Qr_sigma = sqrt(Mr_sigma**2 + Ar_sigma**2)`` (their covariance is not
            modelled), all float32 and each a contiguous array; boolean
            ``out_of_domain`` (an input outside the training range plus margin) and
            ``invalid_input`` (a NaN/inf input; such rows have NaN outputs).
        """
        self._check_fitted()
        band_set = get_band_set(self.band_set_)
        x = self._features(features, band_set)  # unusable colours are filled per chunk
        if x.dtype != np.float32:
            x = x.astype(np.float64, copy=False)
        n = x.shape[0]
        floats = np.empty((len(FLOAT_KEYS), n), dtype=np.float32)  # each output row contiguous
        flags = np.zeros((len(FLAG_KEYS), n), dtype=bool)
        device = resolve_device(self.device)
        plan = self._plan(device)
        if n:
            if device.type == "cpu":
                self._predict_cpu(plan, x, floats, flags)
            else:
                self._predict_device(plan, x, floats, flags)
        out = {key: floats[i] for i, key in enumerate(FLOAT_KEYS)}
        out.update({key: flags[i] for i, key in enumerate(FLAG_KEYS)})
        return out

    def inference_backend(self, device: str | torch.device | None = None) -> str:
        """How :meth:`predict` runs on ``device`` (default: the model's): ``"triton"`` (one
        fused GPU kernel), ``"torch-cuda"`` (a matrix product per layer), ``"onednn"`` or
        ``"torch-cpu"``."""
        self._check_fitted()
        return self._plan(resolve_device(self.device if device is None else device)).backend

    def predict_tensor(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict rows that are already a tensor, on the tensor's device, without host copies.

        For catalogues held in device memory (e.g. a GPU pipeline): ``features`` is an
        (N, 2 + 2 n_colors) tensor in :meth:`predict`'s column order; the results are tensors
        on the same device with :meth:`predict`'s keys and meaning.
        """
        self._check_fitted()
        band_set = get_band_set(self.band_set_)
        expected = self._n_inputs(band_set)
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(
                f"expected an (N, {expected}) tensor for band set {band_set.name!r}, "
                f"got shape {tuple(features.shape)}"
            )
        x = features.to(torch.float32).contiguous()
        with torch.inference_mode():
            x = self._fill_missing(x)
            dest, outside, invalid = self._plan(x.device).run(x)
            out = {key: dest[i] for i, key in enumerate(FLOAT_KEYS)}
            for key, rows in zip(FLAG_KEYS, (outside, invalid), strict=True):
                flag = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
                out[key] = flag.index_fill_(0, rows, True)
        return out

    def _predict_cpu(
        self, plan: _InferencePlan, x: np.ndarray, floats: np.ndarray, flags: np.ndarray
    ) -> None:
        n = x.shape[0]
        chunk = int(self.predict_batch_size or _DEFAULT_CPU_CHUNK)
        if chunk < 1:
            raise ValueError("predict_batch_size must be positive")
        chunks = iter(range(0, n, chunk))
        lock = threading.Lock()
        fill = getattr(self, "color_fill_", None)
        if fill is None:
            fill, patterns = np.zeros(0, np.float32), np.ones(1, bool)
        else:
            fill, patterns = np.asarray(fill, np.float32), np.asarray(self.missing_patterns_)
        low, high = plan.low.numpy(), plan.high.numpy()
        missing_error = np.float32(MISSING_COLOR_ERROR)

        def worker() -> None:
            with _torch_threads(1), torch.inference_mode():
                while True:
                    with lock:
                        start = next(chunks, None)
                    if start is None:
                        return
                    stop = min(start + chunk, n)
                    rows = np.empty((stop - start, x.shape[1]), dtype=np.float32)
                    status = np.empty(stop - start, dtype=np.int8)
                    _prepare_rows(
                        x[start:stop], fill, patterns, missing_error, low, high, rows, status
                    )
                    invalid = np.flatnonzero(status == 2)
                    dest = torch.from_numpy(floats[:, start:stop])
                    plan.forward(torch.from_numpy(rows), dest, torch.from_numpy(invalid))
                    flags[0, start:stop] = status == 1
                    flags[1, start:stop] = status == 2

        workers = min(self._threads(), -(-n // chunk))
        if workers == 1:
            worker()
            return
        # workers inherit one intra-op thread; no worker changes a setting that another uses
        with _torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(worker) for _ in range(workers)]:
                future.result()

    def _predict_device(
        self, plan: _InferencePlan, x: np.ndarray, floats: np.ndarray, flags: np.ndarray
    ) -> None:
        n = x.shape[0]
        chunk = int(self.predict_batch_size or _DEFAULT_DEVICE_CHUNK)
        if chunk < 1:
            raise ValueError("predict_batch_size must be positive")
        chunk = min(chunk, n)
        # page-locked staging buffers: the copies run at full bus speed
        pin = plan.device.type == "cuda"
        host = {"dtype": torch.float32, "device": "cpu", "pin_memory": pin}
        rows_in = torch.empty((chunk, x.shape[1]), **host)
        rows_out = torch.empty((len(FLOAT_KEYS), chunk), **host)
        with torch.inference_mode():
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                m = stop - start
                rows_in[:m].copy_(torch.from_numpy(x[start:stop]))
                rows = self._fill_missing(rows_in[:m].to(plan.device, non_blocking=pin))
                dest, outside, invalid = plan.run(rows)
                rows_out[:, :m].copy_(dest, non_blocking=pin)
                outside, invalid = outside.cpu(), invalid.cpu()
                if pin:
                    torch.cuda.current_stream(plan.device).synchronize()
                floats[:, start:stop] = rows_out[:, :m].numpy()
                flags[0, outside.numpy() + start] = True
                flags[1, invalid.numpy() + start] = True

    # -- persistence ---------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, net in (("primary", self.primary_), ("secondary", self.secondary_)):
            for name, value in net.state_dict().items():
                tensors[f"{prefix}.{name}"] = value.detach().cpu().clone().contiguous()
        tensors["input_mean"] = torch.from_numpy(np.array(self.input_mean_, dtype=np.float64))
        tensors["input_std"] = torch.from_numpy(np.array(self.input_std_, dtype=np.float64))
        tensors["training_range"] = torch.from_numpy(
            np.array(self.training_range_, dtype=np.float64)
        )
        tensors["train_index"] = torch.from_numpy(np.array(self.train_index_, dtype=np.int64))
        tensors["validation_index"] = torch.from_numpy(
            np.array(self.validation_index_, dtype=np.int64)
        )
        return tensors

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted estimator to one safetensors file (written atomically)."""
        self._check_fitted()
        tensors = self._tensors()
        params = self.get_params()
        params["band_set"] = self.band_set_
        params["spec"] = self.spec_.to_dict()
        params["loss_weights"] = [float(w) for w in self.loss_weights]
        params.pop("device")
        info = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "band_set": self.band_set_,
            "n_inputs": int(self.n_features_in_),
            "parameters": list(PARAMETERS),
            "spec": self.spec_.to_dict(),
            "params": params,
            "input_mean": [float(v) for v in self.input_mean_],
            "input_std": [float(v) for v in self.input_std_],
            "training_range": [[float(a), float(b)] for a, b in self.training_range_],
            "color_fill": None
            if self.color_fill_ is None
            else [float(v) for v in self.color_fill_],
            "missing_counts": [int(c) for c in self.missing_counts_],
            "missing_pattern_counts": [int(c) for c in self.missing_pattern_counts_],
            "training": self.training_metadata_,
            "history": self.history_,
            "package_version": __version__,
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        info_text = json.dumps(info, default=json_default)
        metadata = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "photodist": info_text,
            "sha256": _content_digest(tensors, info_text),
            "sha256_covers": _DIGEST_COVERS,
        }
        return write_bytes_atomic(path, _safetensors_save(tensors, metadata=metadata))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        band_set: str | BandSet | None = None,
        device: str = "auto",
    ) -> PhotoDNetwork:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ModelFileError
            The file is corrupted, truncated or not a photodist network.
        ValueError
            ``band_set`` is given and differs from the band set the network was trained on.
        """
        if Path(path).is_dir():
            raise ModelFileError(f"{path} is a folder, not a network file")
        data = Path(path).read_bytes()
        metadata = _read_safetensors_metadata(data, path)
        if metadata.get("format") != FORMAT_NAME or "photodist" not in metadata:
            raise ModelFileError(f"{path}: a safetensors file, but not a photodist network")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise ModelFileError(
                f"{path}: unsupported network file version {metadata.get('format_version')!r} "
                f"(this photodist reads version {FORMAT_VERSION})"
            )
        try:
            info = json.loads(metadata["photodist"])
            tensors = _safetensors_load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"{path}: unreadable network file ({exc})") from exc
        _check_digest(metadata, tensors, path)
        try:
            stored_band_set = get_band_set(info["band_set"])
            spec = NetworkSpec.from_dict(info["spec"])
            n_inputs = int(info["n_inputs"])
            params = dict(info["params"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid network metadata ({exc})") from exc
        if band_set is not None:
            requested = get_band_set(band_set).name
            if requested != stored_band_set.name:
                raise ValueError(
                    f"{path} holds a network for band set {stored_band_set.name!r}, "
                    f"not {requested!r}"
                )
        expected = 2 + 2 * stored_band_set.n_colors + int(bool(params.get("dust_input", False)))
        if n_inputs != expected:
            raise ModelFileError(f"{path}: {n_inputs} inputs do not match its band set")
        params["spec"] = spec
        params["loss_weights"] = tuple(params.get("loss_weights", DEFAULT_LOSS_WEIGHTS))
        try:
            model = cls(**params, device=device)
            model._check_hyperparameters()
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid estimator parameters ({exc})") from exc
        bad = sorted(
            k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()
        )
        bad = [k for k in bad if k != "training_range"]  # open ranges may be infinite
        if bad:
            raise ModelFileError(f"{path}: non-finite values in {', '.join(bad[:5])}")
        target_device = resolve_device(device)
        primary = _MomentsNet(n_inputs, spec)
        secondary = _SigmaNet(n_inputs, spec)
        for prefix, net in (("primary", primary), ("secondary", secondary)):
            state = {
                k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")
            }
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelFileError(
                    f"{path}: weights do not match the stored spec ({exc})"
                ) from exc
            net.eval()
        try:
            input_mean = tensors["input_mean"].numpy()
            input_std = tensors["input_std"].numpy()
            training_range = tensors["training_range"].numpy()
            train_index = tensors["train_index"].numpy()
            validation_index = tensors["validation_index"].numpy()
        except KeyError as exc:
            raise ModelFileError(f"{path}: missing tensor {exc}") from exc
        if (
            input_mean.shape != (n_inputs,)
            or input_std.shape != (n_inputs,)
            or training_range.shape != (n_inputs, 2)
        ):
            raise ModelFileError(f"{path}: input statistics do not match {n_inputs} inputs")
        if not np.all(input_std > 0):
            raise ModelFileError(f"{path}: input standard deviations must be positive")
        if np.isnan(training_range).any() or np.any(training_range[:, 0] > training_range[:, 1]):
            raise ModelFileError(f"{path}: invalid training range (NaN, or low above high)")
        model.primary_ = primary.to(target_device)
        model.secondary_ = secondary.to(target_device)
        model.spec_ = spec
        model.band_set_ = stored_band_set.name
        model.n_features_in_ = n_inputs
        model.input_mean_ = input_mean.copy()
        model.input_std_ = input_std.copy()
        model.training_range_ = training_range.copy()
        model.train_index_ = train_index.copy()
        model.validation_index_ = validation_index.copy()
        model.history_ = info.get("history", {})
        model.training_metadata_ = info.get("training", {})
        training = model.training_metadata_
        if not isinstance(training, dict) or not isinstance(training.get("user", {}), dict):
            raise ModelFileError(f"{path}: invalid network metadata (training record)")
        n_colors = stored_band_set.n_colors
        try:
            fill = info.get("color_fill")
            counts = np.asarray(info.get("missing_counts", [0] * n_colors), dtype=np.int64)
            model.color_fill_ = None if fill is None else np.asarray(fill, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid missing-colour metadata ({exc})") from exc
        if counts.shape != (n_colors,) or (fill is not None and len(fill) != n_colors):
            raise ModelFileError(f"{path}: missing-colour metadata do not match its band set")
        model.missing_counts_ = counts
        try:
            patterns = info.get("missing_pattern_counts")
            model.missing_pattern_counts_ = (
                _pattern_counts_of_colors(counts)
                if patterns is None
                else np.asarray(patterns, dtype=np.int64)
            )
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid missing-colour metadata ({exc})") from exc
        if model.missing_pattern_counts_.shape != (1 << n_colors,):
            raise ModelFileError(f"{path}: missing-colour metadata do not match its band set")
        model._set_missing_support(n_colors)
        model._plans = {}
        return model


#: What a network file's ``sha256`` covers since 0.3.3; files without this key (earlier
#: versions) have a checksum of the tensors alone.
_DIGEST_COVERS = "tensors+metadata"


def _content_digest(tensors: Mapping[str, torch.Tensor], info_text: str | None = None) -> str:
    """SHA-256 of tensor names, dtypes, shapes and bytes (safetensors carries no checksum),
    then of the metadata text ``info_text`` (input statistics, missing-colour fills, domain
    and fit-check settings: all change the predictions)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    if info_text is not None:
        digest.update(b"|metadata|" + info_text.encode("utf-8"))
    return digest.hexdigest()


def _check_digest(
    metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str]
) -> None:
    """Refuse a network file whose checksum does not match its contents. A file written
    before 0.3.3 checks its tensors only, with a warning that its metadata are unchecked."""
    covers = metadata.get("sha256_covers")
    if covers == _DIGEST_COVERS:
        if metadata.get("sha256") != _content_digest(tensors, metadata["photodist"]):
            raise ModelFileError(f"{path}: checksum mismatch, the network file is corrupted")
        return
    if covers is not None or metadata.get("sha256") != _content_digest(tensors):
        raise ModelFileError(f"{path}: checksum mismatch, the network file is corrupted")
    warnings.warn(
        f"{path} was written by photodist before 0.3.3: its checksum covers the weights but "
        "not the metadata; save it again to protect both",
        UserWarning,
        stacklevel=3,
    )


def _read_safetensors_metadata(data: bytes, path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string, with clear errors for damaged files."""
    if len(data) < 8:
        raise ModelFileError(f"{path}: file too short to be a network file ({len(data)} bytes)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(len(data) - 8, _MAX_HEADER_BYTES):
        raise ModelFileError(f"{path}: not a safetensors network file, or truncated")
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupted network-file header ({exc})") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: a safetensors file without photodist metadata")
    return metadata
