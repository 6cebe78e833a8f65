"""Batched linear probes: one L-BFGS per (block, timestep) pair, all solved in lockstep, the best picked on val.

[`fit_probe_grid`] fits scikit-learn's `LogisticRegression` objective for every pair at once and returns a
[`ProbeGridResult`] with a [`LinearProbeHead`] per pair.
"""

import functools
import inspect
import math
import mmap
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.linear_probe_head import MIN_FEATURE_STD, LinearProbeHead, column_mean_and_std
from ..validation import as_feature_matrix, as_inverse_regularisations, as_labels, check_label_range, resolve_num_classes

__all__ = ["FeatureKey", "ProbeGridResult", "fit_probe_grid"]

FeatureKey = Tuple[str, int]

# The L-BFGS solver of `_fit_heads`.
_HISTORY = 10  # curvature pairs kept per head, as scipy's L-BFGS-B (`maxcor`) under scikit-learn's "lbfgs"
_MAX_LINE_SEARCH = 30  # step halvings before a head counts as stalled
_ARMIJO = 1e-4  # sufficient-decrease constant of the backtracking line search
# Each head's variables are preconditioned with (S + _RIDGE * l2 * I)^-1, S = its standardised train features' second
# moment matrix: the data term's Hessian is about S times a softmax curvature of order 1/_RIDGE, plus l2 * I.
_RIDGE = 32.0
_PRECONDITIONER_SAMPLES = 1024  # S is estimated on evenly spaced train samples, at least this many and 4 D
# Early stopping only: a val-loss improvement smaller than this does not reset a head's patience.
_MIN_DELTA = 1e-4
# Val log-losses this close (relative) tie when the best pair is chosen, the earlier pair winning: the same features at
# another place in the batched fit differ in float32's last bits on some CPUs (an AMD EPYC with AVX-512: the later
# pair's loss lower by ~1e-7 relative), well under any difference a choice should rest on.
_LOG_LOSS_TIE = 1e-5
# Rows checked at a time in features on disk (a float16 `numpy.memmap` from `DiffusionFeatureExtractor.extract`).
_DISK_ROWS = 4096
# Features on disk are never stacked whole: each pass of the solver standardises them into float32 chunks
# [P, D_max, rows] of at most this many bytes, so its memory does not grow with N.
_CHUNK_BYTES = 16 * 2**20


# ------------------------------------------------------------------------------------------------------------------
# The result
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeGridResult:
    r"""
    Outcome of [`fit_probe_grid`].

    Args:
        metrics: `pair -> split ("train", "val", "test") -> {"accuracy", "macro_f1", "balanced_accuracy",
            "log_loss"}` of each head's kept weights (log-loss: the mean cross-entropy of the true class).
        best_pair: the pair with the best val accuracy (ties: val macro-F1, then the smaller val log-loss, within a
            relative 1e-5, then the earlier pair in the grid).
        head: the [`LinearProbeHead`] of `best_pair`, standardising with its train mean/std.
        heads: a head for every pair.
        n_iter: the L-BFGS iterations each head ran.
        converged: whether each head's gradient reached `tol` (`False`: it stopped at `max_iter`, stalled in float
            precision, or was stopped by early stopping first).
        kept_iter: the iteration whose weights each head kept: its last one, or with `early_stopping` its
            lowest-val-loss one.
        C: the inverse regularisation strength each head kept (with several `C` given: its best on val).
        val_by_C: `pair -> C -> {"accuracy", "macro_f1", "balanced_accuracy", "log_loss"}` on val of every `C` tried.
        class_weight: the loss weight of each class (`None`: unweighted), from `fit_probe_grid(class_weight=...)`.
    """

    metrics: Dict[FeatureKey, Dict[str, Dict[str, float]]]
    best_pair: FeatureKey
    head: LinearProbeHead
    heads: Dict[FeatureKey, LinearProbeHead] = field(default_factory=dict)
    n_iter: Dict[FeatureKey, int] = field(default_factory=dict)
    converged: Dict[FeatureKey, bool] = field(default_factory=dict)
    kept_iter: Dict[FeatureKey, int] = field(default_factory=dict)
    C: Dict[FeatureKey, float] = field(default_factory=dict)
    val_by_C: Dict[FeatureKey, Dict[float, Dict[str, float]]] = field(default_factory=dict)
    class_weight: Optional[List[float]] = None

    def to_table(self, sort_by: Optional[str] = None) -> List[dict]:
        """One flat row per pair (`block`, `timestep`, `train_accuracy`, `val_macro_f1`, ..., `n_iter`, `converged`,
        `kept_iter`, `C`, `best`), in grid order or descending by a column such as `"val_accuracy"`."""
        rows = []
        for (block, timestep), splits in self.metrics.items():
            pair = (block, timestep)
            row = {"block": block, "timestep": timestep}
            row.update({f"{split}_{name}": v for split, scores in splits.items() for name, v in scores.items()})
            row.update(n_iter=self.n_iter.get(pair), converged=self.converged.get(pair), kept_iter=self.kept_iter.get(pair))
            row["C"] = self.C.get(pair)
            row["best"] = pair == self.best_pair
            rows.append(row)
        if sort_by is not None:
            if sort_by not in rows[0]:
                raise ValueError(f"unknown column {sort_by!r}; expected one of {list(rows[0])}")
            rows.sort(key=lambda row: row[sort_by], reverse=True)
        return rows


# ------------------------------------------------------------------------------------------------------------------
# Input checks and the stacked features
# ------------------------------------------------------------------------------------------------------------------


def _check_features(features: dict, pairs: List[FeatureKey], labels: np.ndarray, split: str) -> Dict:
    """The `split` features as float32 CPU `[N, D]` tensors, one per pair of `pairs` (exactly those), finite."""
    if not isinstance(features, dict):
        raise TypeError(
            f"expected {split}_features as a dict (block, timestep) -> [N, D] tensor, got {type(features).__name__}"
        )
    missing, extra = [p for p in pairs if p not in features], [p for p in features if p not in pairs]
    if missing or extra:
        raise ValueError(
            f"{split}_features must have the pairs of train_features: missing {missing}, unexpected {extra}"
        )
    checked = {}
    for pair in pairs:
        name = f"pair {pair}: {split} features"
        if isinstance(features[pair], np.memmap):  # on disk: checked slice by slice, never loaded whole
            checked[pair] = _check_disk_features(features[pair], name, len(labels))
        else:
            checked[pair] = as_feature_matrix(features[pair], name, len(labels))
    return checked


def _check_disk_features(features: np.memmap, name: str, num_rows: int) -> np.memmap:
    if features.ndim != 2 or len(features) != num_rows:
        raise ValueError(f"expected {name} of shape [{num_rows}, D], one row per label, got {features.shape}")
    for start in range(0, num_rows, _DISK_ROWS):
        as_feature_matrix(features[start : start + _DISK_ROWS], name)  # the error names the slice's first bad row
        _release_pages(features)
    return features


def _stack(features: Dict, pairs, device, mean=None, std=None):
    """Standardised features in memory (float32 tensors), feature-major, as [P, D_max, N] on `device`, with the
    [P, D_max] mean and std used (computed from these features unless given, in float64 as `_ChunkedFeatures`; std
    clamped at 1e-6). Zero padding stays zero, so padded weights get no gradient. A column constant on train is exactly
    0 there, so its weight stays 0 and its values in val and test are ignored: a float32 mean misses the constant by a
    rounding error, which the clamped std turned into a train column of ~0.01, a weight, and val deviations of ~1e4
    (digits with a column of 0.1 on train: val accuracy 0.95 -> 0.32). (Feature-major makes the logits [P, K, N]: on
    CPU their softmax and both products are several times faster than in the [P, N, K] layout.)"""
    dim, num_samples = max(features[p].shape[1] for p in pairs), len(features[pairs[0]])
    out = torch.zeros(len(pairs), dim, num_samples)
    for i, pair in enumerate(pairs):
        out[i, : features[pair].shape[1]].copy_(features[pair].T)
    out = out.to(device)
    if mean is None:
        mean, std = _column_statistics(out)
    out.sub_(mean[:, :, None]).div_(std[:, :, None])
    return out, mean, std


def _column_statistics(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mean and std (clamped at 1e-6) over the samples of x [P, D, N], as float32 [P, D], summed in float64 one
    head at a time (a float64 copy of one head's features, not of the stack)."""
    statistics = [column_mean_and_std(head.T) for head in x]
    return torch.stack([mean for mean, _ in statistics]), torch.stack([std for _, std in statistics])


def _targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What `_data_loss_and_grad` fits: the float labels [N] (binary), else the one-hot labels [K, N]."""
    return labels.float() if num_classes == 2 else F.one_hot(labels, num_classes).T.float()


def _release_pages(features) -> None:
    """Unmap the pages of a memory map that were just read (they stay in the OS page cache): otherwise every page read
    once stays in this process's resident memory, which would grow with N."""
    pages = getattr(features, "_mmap", None)  # numpy.memmap keeps its mmap.mmap here
    # mode "c" maps privately: there the pages may hold the caller's only copy of edited values
    if pages is not None and getattr(features, "mode", "c") != "c" and hasattr(mmap, "MADV_DONTNEED"):
        pages.madvise(mmap.MADV_DONTNEED)


class _StackedFeatures:
    """One split's standardised features of the heads, all in memory: x [P, D_max, N] (see `_stack`), with targets
    and the samples' loss weights (`None`: all 1)."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, sample_weight: Optional[torch.Tensor] = None):
        self.x, self.targets, self.sample_weight = x, targets, sample_weight
        self.shape, self.device = x.shape, x.device

    def __getitem__(self, heads) -> "_StackedFeatures":
        return _StackedFeatures(self.x[heads], self.targets, self.sample_weight)

    def loss_and_grad(self, weight, bias, need_grad: bool = True):
        return _data_loss_and_grad(self.x, self.targets, weight, bias, need_grad, self.sample_weight)

    def columns(self, step: int) -> torch.Tensor:
        """Samples 0, step, 2 step, ... as [P, D_max, n]."""
        return self.x[:, :, ::step]

    def predictions(self, weight, bias, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The predicted class of each head and sample [P, N], and each head's summed log-loss of `labels` [P]."""
        return _predictions_and_log_loss(torch.baddbmm(bias[:, :, None], weight, self.x), labels)


class _ChunkedFeatures:
    """One split's features of the heads, read from their [N, D] matrices (float16 memory maps, or tensors) and
    standardised `rows` samples at a time into float32 [P, D_max, rows] chunks. The full-batch loss and gradient are
    sums over the chunks, so the solver reaches the optimum of the stacked features with memory bounded by one chunk
    (`_CHUNK_BYTES`), whatever N. The standardisation statistics are accumulated in float64."""

    def __init__(
        self, matrices: list, labels: torch.Tensor, num_classes: int, device, mean=None, std=None, rows=None,
        sample_weight: Optional[torch.Tensor] = None, dim: Optional[int] = None,
    ):  # fmt: skip
        self.matrices, self.labels, self.num_classes, self.device = matrices, labels, num_classes, device
        self.sample_weight = sample_weight
        self.dim = dim or max(m.shape[1] for m in matrices)  # a subset of the heads keeps the grid's D_max
        self.shape = (len(matrices), self.dim, len(labels))
        self.rows = rows or max(1, _CHUNK_BYTES // (4 * len(matrices) * self.dim))
        if mean is None:
            mean, std = self._statistics()
        self.mean, self.std = mean, std

    def __getitem__(self, heads) -> "_ChunkedFeatures":
        index = torch.arange(len(self.matrices))[heads.cpu()].tolist()
        return _ChunkedFeatures(
            [self.matrices[i] for i in index], self.labels, self.num_classes, self.device, self.mean[heads],
            self.std[heads], self.rows, self.sample_weight, self.dim,
        )  # fmt: skip

    def _raw(self, rows) -> torch.Tensor:
        """The unstandardised samples `rows` (a slice) as float32 [P, D_max, n] on the device, zero-padded."""
        num_rows = len(range(*rows.indices(self.shape[2])))
        out = torch.zeros(len(self.matrices), self.dim, num_rows)
        for i, matrix in enumerate(self.matrices):
            part = matrix[rows]
            out[i, : matrix.shape[1]].copy_(torch.as_tensor(np.asarray(part, dtype=np.float32)).T)
            _release_pages(matrix)
        return out.to(self.device)

    def _statistics(self):
        """Mean and std (clamped at `MIN_FEATURE_STD`, as `_stack`) of every column, in two passes accumulated in
        float64."""
        total = torch.zeros(self.shape[:2], dtype=torch.float64, device=self.device)
        for rows in self._slices():
            total += self._raw(rows).double().sum(dim=2)
        mean = total / self.shape[2]
        squares = torch.zeros_like(total)
        for rows in self._slices():
            squares += (self._raw(rows).double() - mean[:, :, None]).square().sum(dim=2)
        std = (squares / self.shape[2]).sqrt().clamp(min=MIN_FEATURE_STD)
        return mean.float(), std.float()

    def _slices(self):
        return (slice(start, start + self.rows) for start in range(0, self.shape[2], self.rows))

    def chunks(self):
        """`(standardised x [P, D_max, n], targets, loss weights or None)` of those samples, chunk by chunk."""
        for rows in self._slices():
            sample_weight = None if self.sample_weight is None else self.sample_weight[rows]
            yield self._standardised(rows), _targets(self.labels[rows], self.num_classes), sample_weight

    def _standardised(self, rows: slice) -> torch.Tensor:
        return self._raw(rows).sub_(self.mean[:, :, None]).div_(self.std[:, :, None])

    def loss_and_grad(self, weight, bias, need_grad: bool = True):
        """`_data_loss_and_grad` of all samples: the chunks' means weighted by their share of the samples."""
        loss = grad_weight = grad_bias = 0
        for x, targets, sample_weight in self.chunks():
            share = x.shape[2] / self.shape[2]
            chunk_loss, chunk_grad_weight, chunk_grad_bias = _data_loss_and_grad(
                x, targets, weight, bias, need_grad, sample_weight
            )
            loss = loss + share * chunk_loss
            if need_grad:
                grad_weight, grad_bias = grad_weight + share * chunk_grad_weight, grad_bias + share * chunk_grad_bias
        return (loss, grad_weight, grad_bias) if need_grad else (loss, None, None)

    def columns(self, step: int) -> torch.Tensor:
        return self._standardised(slice(0, self.shape[2], step))

    def predictions(self, weight, bias, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        predicted, log_loss = [], 0
        for rows in self._slices():
            chunk_predicted, chunk_log_loss = _predictions_and_log_loss(
                torch.baddbmm(bias[:, :, None], weight, self._standardised(rows)), labels[rows]
            )
            predicted.append(chunk_predicted)
            log_loss = log_loss + chunk_log_loss
        return torch.cat(predicted, dim=1), log_loss


# ------------------------------------------------------------------------------------------------------------------
# The batched L-BFGS solver
# ------------------------------------------------------------------------------------------------------------------


def _data_loss_and_grad(x, targets, weight, bias, need_grad: bool = True, sample_weight=None):
    """Mean cross-entropy of each head and its gradient, each sample's term times its `sample_weight` [N] if given.

    x: [P, D, N] features; weight [P, R, D], bias [P, R]. With R = 1 (binary, `targets` the float labels [N]) the
    head's logit z is that of class 1 against class 0 (binomial loss, log(1 + e^z) - y z); otherwise R = K logits
    (multinomial loss; `targets` the one-hot labels [K, N]). Returns loss [P], grad_weight [P, R, D], grad_bias [P, R].
    """
    num_samples = x.shape[2]
    logits = torch.baddbmm(bias[:, :, None], weight, x)  # [P, R, N]
    if weight.shape[1] == 1:
        z = logits[:, 0]
        losses = F.softplus(z) - targets * z  # [P, N]
        residual = torch.sigmoid(z).sub_(targets).unsqueeze(1) if need_grad else None
    else:
        log_probs = torch.log_softmax(logits, dim=1)
        losses = -(log_probs * targets).sum(dim=1)
        residual = log_probs.exp_().sub_(targets) if need_grad else None
    if sample_weight is not None:
        losses = losses * sample_weight
    loss = losses.mean(dim=1)
    if not need_grad:
        return loss, None, None
    if sample_weight is not None:
        residual.mul_(sample_weight)
    residual.div_(num_samples)
    return loss, torch.bmm(residual, x.transpose(1, 2)), residual.sum(dim=2)


def _preconditioner(x, ridge: float) -> torch.Tensor:
    """A [P, D, D] with A A^T = (S + ridge I)^-1, S the second moments of the features x [P, D, N] (A = L^-T,
    L L^T = S + ridge I)."""
    num_heads, dim, num_samples = x.shape
    step = max(1, num_samples // max(_PRECONDITIONER_SAMPLES, 4 * dim))
    sample = x.columns(step)
    second_moment = torch.bmm(sample, sample.transpose(1, 2)).double() / sample.shape[2]
    eye = torch.eye(dim, dtype=torch.float64, device=x.device)
    chol, info = torch.linalg.cholesky_ex(second_moment + ridge * eye)
    if bool((info > 0).any()):  # float32 round-off in the moments of collinear features, with a tiny ridge (large C)
        chol = torch.linalg.cholesky(second_moment + (ridge + 1e-3) * eye)  # (unit diagonal: standardised features)
    inverse = torch.linalg.solve_triangular(chol, eye.expand(num_heads, dim, dim), upper=False)  # L^-1
    return inverse.transpose(1, 2).to(sample.dtype).contiguous()


class _Batch:
    """The heads in the solver's batch, with their data, preconditioner and L-BFGS state."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the heads where `keep` is true (every tensor is [P, ...])."""
        for name, value in list(self.__dict__.items()):
            setattr(self, name, value[keep])


def _empty_history(num_heads: int, size: int, device) -> dict:
    """Each head's L-BFGS curvature history: `_HISTORY` slots of pairs s, y [P, m, n], filled in turn (the slot of
    the k-th pair is k mod m, so that a step writes one pair instead of copying the history), whether each pair is
    `curved` [P, m] (an empty slot and a pair left out are zeros and not curved), and the products over them that
    `_inverse_hessian_times` needs, S^T Y (its upper triangle in the pairs' order) and Y^T Y, [P, m, m] in float64."""
    pairs = torch.zeros(num_heads, _HISTORY, size, device=device)
    products = torch.zeros(num_heads, _HISTORY, _HISTORY, dtype=torch.float64, device=device)
    return dict(
        s=pairs, y=pairs.clone(), s_y=products, y_y=products.clone(),
        curved=torch.zeros(num_heads, _HISTORY, dtype=torch.bool, device=device),
    )  # fmt: skip


def _append_pair(batch: _Batch, number: int, s, y, sy, curved) -> None:
    """Write each head's `number`-th curvature pair (s, y [P, n] with sy = s.y; zeros where not `curved`) over its
    oldest, and the new pair's column of S^T Y and of Y^T Y (its row too: Y^T Y is symmetric; S^T Y's row is not
    used). The diagonal entry of S^T Y is `sy`, the value `curved` was decided on, so it is positive."""
    slot = number % _HISTORY
    keep = curved[:, None].to(s.dtype)
    batch.s[:, slot], batch.y[:, slot], batch.curved[:, slot] = s * keep, y * keep, curved
    new_y = batch.y[:, slot, None]
    s_y = torch.bmm(new_y, batch.s.transpose(1, 2))[:, 0].double()  # s_i . y_new
    y_y = torch.bmm(new_y, batch.y.transpose(1, 2))[:, 0].double()
    s_y[:, slot] = torch.where(curved, sy.double(), 0.0)
    batch.s_y[:, slot], batch.s_y[:, :, slot] = 0.0, s_y
    batch.y_y[:, slot], batch.y_y[:, :, slot] = y_y, y_y


def _inverse_hessian_times(grad, batch: _Batch, num_pairs: int):
    """H grad, H each head's L-BFGS inverse-Hessian estimate from its last `_HISTORY` of the `num_pairs` curvature
    pairs written (`_append_pair`) and its initial scale `batch.gamma` [P].

    The compact form of Byrd, Nocedal & Schnabel (1994, eq. 3.1), the one scipy's L-BFGS-B uses: the same H as the
    two-loop recursion, in a few batched products instead of four vector operations per pair, which on a GPU are
    as many kernel launches. With R the upper triangle of S^T Y and D its diagonal, the pairs oldest first,
    H g = gamma g + S R^-T ((D + gamma Y^T Y) R^-1 S^T g - gamma Y^T g) - gamma Y R^-1 S^T g,
    its m x m systems solved in float64. A pair left out has zero columns in S and Y and drops out of every term.
    """
    oldest = num_pairs % _HISTORY  # the slots rolled by -oldest are in the pairs' order
    row = grad[:, None]  # row vector times matrix: far faster than matrix times column in a CPU bmm
    s_g = torch.bmm(row, batch.s.transpose(1, 2)).transpose(1, 2).double().roll(-oldest, 1)  # [P, m, 1]
    y_g = torch.bmm(row, batch.y.transpose(1, 2)).transpose(1, 2).double().roll(-oldest, 1)
    s_y, y_y = (products.roll((-oldest, -oldest), (1, 2)) for products in (batch.s_y, batch.y_y))
    diagonal = torch.where(batch.curved.roll(-oldest, 1), s_y.diagonal(dim1=1, dim2=2), 1.0)  # R stays invertible
    upper = s_y.triu(1) + torch.diag_embed(diagonal)
    gamma = batch.gamma.double()[:, None, None]
    p = torch.linalg.solve_triangular(upper, s_g, upper=True)  # R^-1 S^T g
    middle = diagonal[:, :, None] * p + gamma * (torch.bmm(y_y, p) - y_g)
    q = torch.linalg.solve_triangular(upper.transpose(1, 2), middle, upper=False)  # R^-T (...)
    coefficients = [c.roll(oldest, 1).transpose(1, 2).to(grad.dtype) for c in (q, gamma * p)]  # back to the slots
    correction = torch.baddbmm(torch.bmm(coefficients[0], batch.s), coefficients[1], batch.y, alpha=-1.0)
    return batch.gamma[:, None] * grad + correction[:, 0]


def _fit_heads(x, num_rows, l2, tol, max_iter, val=None, patience=None, progress_bar=None):
    """Minimise each head's mean cross-entropy + l2 / 2 * ||weight||^2 (bias unpenalised) from zero weights.

    x and val: the train and val features with their targets ([`_StackedFeatures`] or [`_ChunkedFeatures`]).

    One L-BFGS per head, all run in lockstep on the stacked heads: every head has its own curvature history, step
    size (backtracking Armijo line search from step 1) and stopping test (largest absolute gradient entry <= tol, the
    test scipy's L-BFGS-B applies for scikit-learn), so a head's iterates are those it would have alone. A head that
    stops is frozen (its direction is zero) and leaves the batch once a quarter of the batch is frozen, so the data is
    copied a bounded number of times. Variables are preconditioned per head (see `_RIDGE`).
    With `val`, the val loss is evaluated at every iterate; each head keeps its lowest-val-loss iterate and stops after
    `patience` iterations without improvement.

    Returns weight [P, R, D], bias [P, R], n_iter, converged and kept_iter (lists of P).
    """
    evaluate = functools.partial(_penalised_loss, num_rows=num_rows, l2=l2)
    batch = _start_batch(x, num_rows, l2, val, evaluate)
    fitted = _FittedHeads(x.shape[0], num_rows, x.shape[1], x.device, tol, early_stopping=val is not None)
    if val is not None:
        fitted.keep_if_best(batch, 0)
    progress = tqdm(**{"total": max_iter, "desc": "Fitting probes", "unit": "iteration", **(progress_bar or {})})
    for iteration in range(1, max_iter + 1):
        done = batch.frozen | (batch.grad_max <= tol) | batch.stalled
        if val is not None:
            done |= batch.waited > patience
        if bool((done & ~batch.frozen).any()):
            fitted.finish(batch, done & ~batch.frozen, iteration - 1)
            batch.frozen = done
            num_done = int(done.sum())
            if num_done == len(done):
                break
            if 4 * num_done >= len(done):
                batch.select(~done)
        direction, slope = _descent_direction(batch, iteration)
        theta, trial, accepted = _line_search(batch, direction, slope, evaluate)
        _move_to(batch, iteration, theta, trial, accepted)
        if val is not None:
            fitted.keep_if_best(batch, iteration)
        progress.update(1)
        if not progress.disable:  # the count waits on the device: a GPU's queue would drain every iteration
            progress.set_postfix(heads=int((~batch.frozen).sum()))
    else:  # max_iter reached
        fitted.finish(batch, ~batch.frozen, max_iter)
    progress.total = progress.n  # converged before max_iter: the bar ends full
    progress.close()
    return fitted.weight, fitted.bias, fitted.n_iter.tolist(), fitted.converged.tolist(), fitted.kept_iter.tolist()


def _penalised_loss(x, precond, theta, num_rows: int, l2: float):
    """Each head's mean cross-entropy + l2 / 2 * ||weight||^2 at theta = (u, bias) [P, R * D + R], weight = u A^T (A:
    `precond`); its gradient in theta, its largest absolute gradient entry in (weight, bias) (the stopping test's),
    weight and bias."""
    dim = x.shape[1]
    u, bias = theta[:, : num_rows * dim].view(-1, num_rows, dim), theta[:, num_rows * dim :]
    weight = torch.bmm(u, precond.transpose(1, 2))  # weight = u A^T
    loss, grad_weight, grad_bias = x.loss_and_grad(weight, bias)
    loss = loss + 0.5 * l2 * weight.square().sum(dim=(1, 2))
    grad_weight += l2 * weight
    grad_max = torch.maximum(grad_weight.abs().amax(dim=(1, 2)), grad_bias.abs().amax(dim=1))
    grad = torch.cat([torch.bmm(grad_weight, precond).flatten(1), grad_bias], dim=1)  # chain rule
    return loss, grad, grad_max, weight, bias


def _start_batch(x, num_rows: int, l2: float, val, evaluate) -> _Batch:
    """Every head in the batch at zero weights, evaluated, with an empty history."""
    num_heads, dim, _ = x.shape
    device, size = x.device, num_rows * dim + num_rows
    batch = _Batch(
        index=torch.arange(num_heads, device=device), x=x, precond=_preconditioner(x, _RIDGE * l2),
        theta=torch.zeros(num_heads, size, device=device),
        **_empty_history(num_heads, size, device), gamma=torch.ones(num_heads, device=device),
        frozen=torch.zeros(num_heads, dtype=torch.bool, device=device),
        stalled=torch.zeros(num_heads, dtype=torch.bool, device=device),
        best_loss=torch.full((num_heads,), float("inf"), device=device),
        waited=torch.zeros(num_heads, dtype=torch.long, device=device),
    )  # fmt: skip
    if val is not None:
        batch.x_val = val
    batch.loss, batch.grad, batch.grad_max, batch.weight, batch.bias = evaluate(batch.x, batch.precond, batch.theta)
    return batch


class _FittedHeads:
    """`_fit_heads`'s result, filled in as heads stop: each head's kept weight and bias (its last iterate, or with
    early stopping its lowest-val-loss one), its iterations, whether it converged and the iteration kept."""

    def __init__(self, num_heads: int, num_rows: int, dim: int, device, tol: float, early_stopping: bool):
        self.weight = torch.zeros(num_heads, num_rows, dim, device=device)
        self.bias = torch.zeros(num_heads, num_rows, device=device)
        self.n_iter = torch.zeros(num_heads, dtype=torch.long)
        self.kept_iter = torch.zeros(num_heads, dtype=torch.long)
        self.converged = torch.zeros(num_heads, dtype=torch.bool)
        self.tol, self.early_stopping = tol, early_stopping

    def keep_if_best(self, batch: _Batch, iteration: int) -> None:
        """Early stopping: record the iterate of each head whose val loss improved."""
        val_loss = batch.x_val.loss_and_grad(batch.weight, batch.bias, need_grad=False)[0]
        improved = ~batch.frozen & (val_loss < batch.best_loss - _MIN_DELTA)
        batch.best_loss = torch.where(improved, val_loss, batch.best_loss)
        batch.waited = torch.where(improved, 0, batch.waited + 1)
        index = batch.index[improved]
        self.weight[index], self.bias[index] = batch.weight[improved], batch.bias[improved]
        self.kept_iter[index.cpu()] = iteration

    def finish(self, batch: _Batch, heads: torch.Tensor, iteration: int) -> None:
        """Record the heads that stop at `iteration`."""
        index = batch.index[heads]
        self.converged[index.cpu()] = (batch.grad_max[heads] <= self.tol).cpu()
        self.n_iter[index.cpu()] = iteration
        if not self.early_stopping:
            self.weight[index], self.bias[index] = batch.weight[heads], batch.bias[heads]
            self.kept_iter[index.cpu()] = iteration


def _descent_direction(batch: _Batch, iteration: int):
    """Each head's L-BFGS direction (zero when frozen) and its slope; where round-off made it uphill, steepest
    descent, with the head's history cleared."""
    direction = _inverse_hessian_times(batch.grad, batch, num_pairs=iteration - 1)
    direction = torch.where(batch.frozen[:, None], 0.0, -direction)
    slope = (batch.grad * direction).sum(dim=1)
    uphill = ~batch.frozen & ~(slope < 0)  # round-off only (H is positive definite; NaN too): steepest descent
    if bool(uphill.any()):
        direction[uphill], slope[uphill] = -batch.grad[uphill], -batch.grad[uphill].square().sum(dim=1)
        batch.s[uphill], batch.y[uphill], batch.s_y[uphill], batch.y_y[uphill] = 0.0, 0.0, 0.0, 0.0
        batch.curved[uphill], batch.gamma[uphill] = False, 1.0
    return direction, slope


def _line_search(batch: _Batch, direction, slope, evaluate):
    """Backtracking from step 1, per head, to sufficient decrease (float32 round-off in the loss tolerated): the trial
    point theta, its evaluation (loss, grad, grad_max, weight, bias) and which heads accept it; a head that does not
    after `_MAX_LINE_SEARCH` halvings has stalled. Only the heads still searching are evaluated again."""
    step = torch.ones_like(slope)
    slack = 4 * torch.finfo(batch.loss.dtype).eps * batch.loss.abs()
    theta = batch.theta + direction
    trial = evaluate(batch.x, batch.precond, theta)
    loss = trial[0]
    accepted = batch.frozen | (loss <= batch.loss + _ARMIJO * slope + slack)
    for _ in range(_MAX_LINE_SEARCH):
        if bool(accepted.all()):
            break
        retry = (~accepted).nonzero().squeeze(1)
        step[retry] /= 2
        theta[retry] = batch.theta[retry] + step[retry, None] * direction[retry]
        result = evaluate(batch.x[retry], batch.precond[retry], theta[retry])
        for tensor, new in zip(trial, result):
            tensor[retry] = new
        accepted[retry] = loss[retry] <= batch.loss[retry] + _ARMIJO * step[retry] * slope[retry] + slack[retry]
    return theta, trial, accepted


def _move_to(batch: _Batch, iteration: int, theta, trial, accepted) -> None:
    """Each head that accepted its trial point moves there and adds the step's curvature pair; one that did not stays,
    stalled."""
    loss, grad, grad_max, weight, bias = trial
    batch.stalled = ~accepted
    s, y = theta - batch.theta, grad - batch.grad
    sy, yy = (s * y).sum(dim=1), y.square().sum(dim=1)
    curved = accepted & (sy > 1e-10 * yy) & (yy > 0)  # a pair that would break positive definiteness is skipped
    _append_pair(batch, iteration - 1, s, y, sy, curved)
    batch.gamma = torch.where(curved, sy / yy.clamp(min=1e-30), batch.gamma)
    batch.theta = torch.where(accepted[:, None], theta, batch.theta)
    batch.loss = torch.where(accepted, loss, batch.loss)
    batch.grad = torch.where(accepted[:, None], grad, batch.grad)
    batch.grad_max = torch.where(accepted, grad_max, batch.grad_max)
    batch.weight = torch.where(accepted[:, None, None], weight, batch.weight)
    batch.bias = torch.where(accepted[:, None], bias, batch.bias)


# ------------------------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------------------------


def _predictions_and_log_loss(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """From logits [P, K, N]: the predicted classes [P, N] and each head's summed cross-entropy of `labels` [P]."""
    log_probs = logits.log_softmax(dim=1)
    taken = log_probs.gather(1, labels.expand(len(logits), 1, -1)).squeeze(1)
    return logits.argmax(dim=1), -taken.double().sum(dim=1)


def _head_scores(
    pred: torch.Tensor, log_loss_sum: torch.Tensor, y: torch.Tensor, num_classes: int
) -> List[Dict[str, float]]:
    """Per-head accuracy, macro-F1 and balanced accuracy from predicted classes [P, N], as `metrics.classification_
    metrics` computes them (both averaged over the classes present in the labels: with every class present, macro-F1
    is scikit-learn's), and the mean log-loss (cross-entropy) from its sum [P]. Per-class counts [P, K], never one-hot
    [P, N, K] matrices (2.4 GB for 40 pairs, 121 classes and 32,000 test images)."""
    correct = pred == y
    accuracy = correct.double().mean(dim=1)
    tp = _class_counts(torch.where(correct, y, num_classes), num_classes + 1)[:, :num_classes]  # wrong: class K
    true_counts = torch.bincount(y, minlength=num_classes).double().expand_as(tp)
    denominator = _class_counts(pred, num_classes) + true_counts  # 2tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), 0.0)
    macro_f1 = (f1 * (true_counts > 0)).sum(dim=1) / (true_counts > 0).sum(dim=1)
    balanced_accuracy = (tp / true_counts.clamp(min=1)).sum(dim=1) / (true_counts > 0).sum(dim=1)
    log_loss = log_loss_sum / y.numel()
    return [{"accuracy": a, "macro_f1": f, "balanced_accuracy": b, "log_loss": c}
            for a, f, b, c in zip(accuracy.tolist(), macro_f1.tolist(), balanced_accuracy.tolist(), log_loss.tolist())]


def _class_counts(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many samples of each row of classes [P, N] are of each class, as float64 [P, num_classes]."""
    counts = torch.zeros(len(classes), num_classes, dtype=torch.float64, device=classes.device)
    return counts.scatter_add_(1, classes, torch.ones_like(classes, dtype=torch.float64))


def _split_features(features: Dict, pairs, labels, num_classes, device, mean=None, std=None, sample_weight=None):
    """One split's features as the solver reads them, with the mean and std that standardise them (computed here for
    the train split): stacked in memory, or, when any pair is on disk (a `numpy.memmap`), chunk by chunk."""
    if any(isinstance(features[pair], np.memmap) for pair in pairs):
        matrices = [features[pair] for pair in pairs]
        chunked = _ChunkedFeatures(matrices, labels, num_classes, device, mean, std, sample_weight=sample_weight)
        return chunked, chunked.mean, chunked.std
    x, mean, std = _stack(features, pairs, device, mean, std)
    return _StackedFeatures(x, _targets(labels, num_classes), sample_weight), mean, std


def _class_weights(class_weight, train_labels: torch.Tensor, num_classes: int) -> Optional[torch.Tensor]:
    """The [K] loss weight of each class (`None`: unweighted), checked: `"balanced"` gives class k the weight
    N / (K' n_k) over the K' classes with train samples, as scikit-learn's (1 for a class without any)."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f'class_weight: expected None, "balanced" or one weight per class, got {class_weight!r}')
        counts = torch.bincount(train_labels.cpu(), minlength=num_classes).double()
        present = counts > 0
        weights = torch.ones(num_classes, dtype=torch.float64)
        weights[present] = len(train_labels) / (int(present.sum()) * counts[present])
        return weights
    weights = torch.as_tensor(np.asarray(class_weight, dtype=np.float64))
    if weights.shape != (num_classes,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            f"class_weight: expected {num_classes} finite weights >= 0, one per class, got {np.ravel(class_weight).tolist()}"
        )
    if not float(weights[train_labels.cpu()].sum()) > 0:
        raise ValueError("class_weight: every train sample has weight 0; expected a positive weight for some class")
    return weights


def _sample_weights(class_weights: Optional[torch.Tensor], labels: torch.Tensor) -> Tuple[Optional[torch.Tensor], float]:
    """Each sample's loss weight, scaled to mean 1 over the split (the loss stays a weighted mean), and the unscaled
    weights' sum S (the penalty is ||weight||^2 / (2 C S), as scikit-learn's); `(None, N)` when unweighted."""
    if class_weights is None:
        return None, float(len(labels))
    weights = class_weights.to(labels.device)[labels]
    total = float(weights.sum())
    return (weights * (len(labels) / total)).float() if total > 0 else weights.float(), total


def _make_head(pair, weight, bias, mean, std, num_classes, class_names, pool, noise_seed, num_noise_draws, views):
    dim = len(mean)
    head = LinearProbeHead(
        in_features=dim,
        num_classes=num_classes,
        block=list(pair[0]) if isinstance(pair[0], tuple) else pair[0],
        timestep=int(pair[1]),
        pool=pool,
        noise_seed=noise_seed,
        num_noise_draws=num_noise_draws,
        class_names=list(class_names) if class_names is not None else None,
        views=views,
    )
    with torch.no_grad():
        head.feature_mean.copy_(mean)
        head.feature_std.copy_(std)
        head.linear.weight.copy_(weight)
        head.linear.bias.copy_(bias)
    return head


def fit_probe_grid(
    train_features: Dict[FeatureKey, torch.Tensor],
    train_labels,
    val_features: Dict[FeatureKey, torch.Tensor],
    val_labels,
    test_features: Optional[Dict[FeatureKey, torch.Tensor]] = None,
    test_labels=None,
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    pool: Optional[str] = "mean",
    noise_seed: int = 0,
    num_noise_draws: int = 1,
    views: Optional[str] = None,
    C: Union[float, Sequence[float]] = 1.0,
    class_weight: Union[None, str, Sequence[float]] = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    early_stopping: bool = False,
    patience: int = 10,
    device: Optional[str] = None,
    progress_bar: Optional[dict] = None,
) -> ProbeGridResult:
    r"""
    Fit one linear probe per (block, timestep) pair, all at once, and pick the best pair on validation.

    Each pair's features are standardised with its train mean and std (std clamped at 1e-6). Each head minimises
    scikit-learn's `LogisticRegression` objective (its default `penalty="l2"`, `fit_intercept=True`, `C`):

        mean over train samples of cross-entropy  +  1 / (2 * C * N) * ||weight||^2,     bias unpenalised,

    i.e. `C * sum(cross-entropy) + ||weight||^2 / 2` divided by N; with `class_weight`, each sample's cross-entropy
    is times its class's weight w and N becomes the sum of the train samples' w, as scikit-learn's. With more than 2
    classes the loss is the multinomial (softmax) one over K logits; with 2 it is the binomial one over a single logit
    z (probability sigmoid(z) of class 1, saved as the logits [-z/2, z/2]), again as scikit-learn. The problem is
    strictly convex, so each head has one optimum, whatever the other heads.

    The heads form one batched model (`[P, K, D_max] @ [P, D_max, N]`, smaller features zero-padded) solved by a
    full-batch L-BFGS per head, run in lockstep: per head its own curvature history, line search and stopping test
    (every gradient entry within `tol`, the test of scikit-learn's default `lbfgs` solver), so the batch computes what
    each head would alone. The variables are preconditioned with each head's feature second moments, which makes the
    solver need far fewer passes than on raw standardised features. A head leaves the batch once it stops.

    Args:
        train_features, val_features, test_features: `(block, timestep) -> [N, D]` features, e.g. from
            [`DiffusionFeatureExtractor.extract`]; every dict must have the same pairs. Features in memory are
            stacked into one float32 working copy `[P, D_max, N]`. A split with a float16 `numpy.memmap` (features
            on disk, beyond the extractor's `max_memory_bytes`) is never stacked: every pass of the solver reads it
            in chunks of at most 16 MiB of float32, so memory stays flat as N grows, and the heads are the optimum of
            the same values in memory (to float32 summation order; standardised with statistics summed in float64).
            A block may be a tuple of block names, for a hypercolumn (`features.hypercolumn`): its head's `block` is
            then their list, and the pipeline reads their features concatenated.
        train_labels, val_labels, test_labels: integer labels in `[0, num_classes)`.
        num_classes: defaults to `len(class_names)`, else the largest train or val label + 1 (test labels are
            scored only: one beyond is refused).
        class_names: recorded in the heads' configs.
        pool, noise_seed, num_noise_draws, views: how the features were made, recorded in the heads' configs: taken
            from the features' `settings` where they are the extractor's [`~features.FeatureGrid`] (an argument
            other than its default that contradicts them is refused), else these arguments.
        C: inverse regularisation strength, as scikit-learn's (`> 0`; smaller is stronger), or several: each pair's
            head is then fitted at every one and keeps the one with the best val accuracy (ties: val macro-F1, then
            the smaller C), as the pair is chosen. The best strength depends on the features and on how many labels
            there are, so a range such as `(0.1, 0.3, 1, 3, 10, 30, 100)` lets val decide, at one fit per value.
            Every value is solved from zero weights, as scikit-learn does. With many samples, the gradients of two
            large values differ by less than `tol` ((1/C - 1/C') * weight / N), so such a head is wherever the solver
            first meets `tol` and depends on where it starts: on NDSB plankton's SimCLR features (N = 21,824), C = 100
            started from the C = 30 solution scores on val exactly as that solution, 0.6 points below C = 100 from zero.
        class_weight: `"balanced"` weighs class k by N / (K n_k) (n_k its train samples, K the classes that have
            any), so that every class counts as much in the loss whatever its frequency (long-tailed data); or one
            weight >= 0 per class; `None` (default): every sample counts once. The val loss of early stopping is
            weighted alike. The pair and C are still chosen by val accuracy (ties: macro-F1).
        tol: a head has converged when every entry of its gradient is at most `tol` in absolute value.
        max_iter: the most L-BFGS iterations. Each costs one pass over the train features (a forward and a
            backward product) plus one per step halving of the line search, which is rare.
        early_stopping: also evaluate the val loss (mean cross-entropy) of every iterate; each head keeps its
            lowest-val-loss iterate and stops after `patience` iterations without an improvement of 1e-4. Off by
            default: the penalty already regularises, and without it the heads are the optimum of the objective above.
        device: defaults to CUDA when available.
        progress_bar: `tqdm` arguments for the bar over L-BFGS iterations (the heads still running shown);
            `{"disable": True}` hides it.

    Returns:
        [`ProbeGridResult`]. A `UserWarning` names the heads, at every C, that reached `max_iter` before `tol`.
    """
    if (test_features is None) != (test_labels is None):
        raise ValueError("expected test_features and test_labels together, got only one of them")
    if not isinstance(train_features, dict) or not train_features:
        raise ValueError("expected train_features as a non-empty dict (block, timestep) -> [N, D] tensor")
    Cs = as_inverse_regularisations(C)
    if not tol > 0 or max_iter < 1 or patience < 0:
        raise ValueError(
            f"expected tol > 0, max_iter >= 1 and patience >= 0, got tol={tol}, max_iter={max_iter}, patience={patience}"
        )
    raw = {"train": (train_features, train_labels), "val": (val_features, val_labels)}
    if test_features is not None:
        raw["test"] = (test_features, test_labels)
    made = _extraction_settings(
        {split: f for split, (f, _) in raw.items()},
        {"pool": pool, "noise_seed": noise_seed, "num_noise_draws": num_noise_draws, "views": views},
    )
    labels = {split: as_labels(y, f"{split}_labels") for split, (_, y) in raw.items()}
    inferred = num_classes is None and class_names is None
    # test labels are scored only: counted here, a class test alone holds gave every head an output (QA)
    num_classes = resolve_num_classes(num_classes, class_names, labels["train"], labels["val"])
    for split, y in labels.items():
        if split == "test" and inferred and len(y) and int(y.max()) >= num_classes:
            raise ValueError(
                f"test_labels: class {int(y.max())} is held by no train or val label, so no head can predict it (the "
                f"classes read from train and val: {num_classes}); pass num_classes or class_names to score it"
            )
        check_label_range(y, f"{split}_labels", num_classes)
    class_weights = _class_weights(class_weight, torch.as_tensor(labels["train"], dtype=torch.long), num_classes)
    pairs = list(train_features)
    features = {split: _check_features(f, pairs, labels[split], split) for split, (f, _) in raw.items()}
    for split, split_features in features.items():
        for pair in pairs:
            if split_features[pair].shape[1] != features["train"][pair].shape[1]:
                raise ValueError(
                    f"pair {pair}: {split} features have {split_features[pair].shape[1]} columns, "
                    f"train features have {features['train'][pair].shape[1]}"
                )

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    y = {split: torch.as_tensor(v, dtype=torch.long, device=device) for split, v in labels.items()}
    weights = {split: _sample_weights(class_weights, y[split]) for split in features}
    x, mean, std = {}, None, None
    for split in features:  # train first: its mean and std standardise every split
        x[split], mean, std = _split_features(
            features[split], pairs, y[split], num_classes, device, mean, std, sample_weight=weights[split][0]
        )
    train_weight_sum = weights["train"][1]
    fits = {
        c: _fit_and_score(x, y, num_classes, 1.0 / (c * train_weight_sum), tol, max_iter, early_stopping, patience, progress_bar)
        for c in Cs
    }  # fmt: skip
    kept_C = [max(Cs, key=lambda c: (fits[c].val_key(i), -c)) for i in range(len(pairs))]  # ties: the smaller C
    kept = [fits[c].head(i) for i, c in enumerate(kept_C)]
    weight, bias = torch.stack([k["weight"] for k in kept]), torch.stack([k["bias"] for k in kept])
    n_iter, converged, kept_iter = ([k[name] for k in kept] for name in ("n_iter", "converged", "kept_iter"))
    _warn_unconverged(fits, pairs, max_iter, tol)

    metrics = {pair: k["scores"] for pair, k in zip(pairs, kept)}
    best = _best_on_val([m["val"] for m in metrics.values()])
    config = dict(num_classes=num_classes, class_names=class_names, **made)
    weight, bias, mean, std = weight.cpu(), bias.cpu(), mean.cpu(), std.cpu()
    dims = [features["train"][p].shape[1] for p in pairs]
    heads = {
        p: _make_head(p, weight[i, :, :d], bias[i], mean[i, :d], std[i, :d], **config)
        for i, (p, d) in enumerate(zip(pairs, dims))
    }
    return ProbeGridResult(
        metrics=metrics,
        best_pair=pairs[best],
        head=heads[pairs[best]],
        heads=heads,
        n_iter=dict(zip(pairs, n_iter)),
        converged=dict(zip(pairs, converged)),
        kept_iter=dict(zip(pairs, kept_iter)),
        C=dict(zip(pairs, kept_C)),
        val_by_C={p: {c: fits[c].scores["val"][i] for c in Cs} for i, p in enumerate(pairs)},
        class_weight=None if class_weights is None else class_weights.tolist(),
    )


def _extraction_settings(features_by_split: dict, given: dict) -> dict:
    """How the features were made, for the heads' configs (the pipeline reads new images so): the `settings` of
    `features.FeatureGrid`s (the extractor's output; every split's the same), an argument other than its default
    that contradicts them refused (QA: a head fitted on features of noise_seed=7 recorded 0, and its pipeline gave
    probabilities 0.39 away, without a word); without them, the arguments `given`."""
    recorded = {
        split: features.settings for split, features in features_by_split.items()
        if getattr(features, "settings", None) is not None
    }  # fmt: skip
    if not recorded:
        return given
    (first_split, settings), *others = recorded.items()
    for split, other in others:
        if other != settings:
            raise ValueError(
                f"{split}_features: extracted with {other}, {first_split}_features with {settings}: expected every "
                "split's features made the same way"
            )
    defaults = inspect.signature(fit_probe_grid).parameters
    for name, value in given.items():
        if value != defaults[name].default and value != settings[name]:
            raise ValueError(
                f"{name}={value!r}: the features were extracted with {name}={settings[name]!r} (their settings); "
                "leave it out, or extract them so"
            )
    return {name: settings[name] for name in given}


def _warn_unconverged(fits: Dict[float, "_Fit"], pairs: list, max_iter: int, tol: float) -> None:
    """A `UserWarning` naming every head, at every C, that reached `max_iter` before `tol` (its val scores, which
    choose the C, are those of an unsolved objective)."""
    several = len(fits) > 1
    stopped = [
        f"{pair} at C={c:g}" if several else str(pair)
        for c, fit in fits.items()
        for pair, n, ok in zip(pairs, fit.n_iter, fit.converged)
        if n == max_iter and not ok
    ]
    if stopped:
        warnings.warn(
            f"{len(stopped)} of {len(pairs) * len(fits)} probes reached max_iter={max_iter} before tol={tol}: "
            f"[{', '.join(stopped)}]; increase max_iter",
            UserWarning,
            stacklevel=3,
        )


@dataclass
class _Fit:
    """Every head fitted at one C: weights `[P, K, D_max]`, biases, solver counts and `scores[split][pair index]`."""

    weight: torch.Tensor
    bias: torch.Tensor
    n_iter: list
    converged: list
    kept_iter: list
    scores: Dict[str, List[Dict[str, float]]]

    def val_key(self, i: int) -> Tuple[float, float]:
        return self.scores["val"][i]["accuracy"], self.scores["val"][i]["macro_f1"]

    def head(self, i: int) -> dict:
        return {
            "weight": self.weight[i], "bias": self.bias[i], "n_iter": self.n_iter[i], "converged": self.converged[i],
            "kept_iter": self.kept_iter[i], "scores": {split: s[i] for split, s in self.scores.items()},
        }  # fmt: skip


def _best_on_val(val: list) -> int:
    """The index of the best val scores: accuracy, ties broken by macro-F1, then the smaller log-loss (QA: 12 of 21
    pairs at 100% on 8 val images) up to `_LOG_LOSS_TIE`, then the earlier index (a loss that is not a number loses)."""
    top = max((scores["accuracy"], scores["macro_f1"]) for scores in val)
    tied = [i for i, scores in enumerate(val) if (scores["accuracy"], scores["macro_f1"]) == top]
    losses = [val[i]["log_loss"] for i in tied if not math.isnan(val[i]["log_loss"])]
    if not losses:
        return tied[0]
    lowest = min(losses)
    return next(i for i in tied if val[i]["log_loss"] <= lowest + _LOG_LOSS_TIE * max(abs(lowest), 1e-12))


def _fit_and_score(x, y, num_classes, l2, tol, max_iter, early_stopping, patience, progress_bar) -> _Fit:
    """Every head at penalty `l2`, scored on every split."""
    binary = num_classes == 2
    weight, bias, n_iter, converged, kept_iter = _fit_heads(
        x["train"], 1 if binary else num_classes, l2, tol, max_iter,
        val=x["val"] if early_stopping else None, patience=patience, progress_bar=progress_bar,
    )  # fmt: skip
    if binary:  # logit z of class 1 -> logits [-z/2, z/2]: the same softmax probabilities
        weight, bias = torch.cat([-weight, weight], dim=1) / 2, torch.cat([-bias, bias], dim=1) / 2
    with torch.no_grad():
        scores = {
            split: _head_scores(*x[split].predictions(weight, bias, y[split]), y[split], num_classes) for split in x
        }
    return _Fit(weight, bias, list(n_iter), list(converged), list(kept_iter), scores)
