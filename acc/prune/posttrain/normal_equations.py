"""Ridge least squares from accumulated normal equations, the ridge strength chosen on held-out rows.

A layer's refit solves, for each group g of independent unknowns (one for a plain conv or Gemm,
one per channel for a depthwise conv), W_g = argmin ||X W - Y||^2 + lam ||W - W0||^2: the rows X
are the pruned model's inputs to the layer (im2col patches of the kept input channels, and a 1
for the bias), Y the original model's output of the layer, W0 the pruned layer's own weights.
Pulling towards W0 rather than towards zero means that where the data say little (fewer rows than
unknowns, a direction the calibration images never excite) the layer keeps what it had:

    W = (A + lam I)^-1 (B + lam W0),   A = X^T X,  B = X^T Y.

Only A, B and sum(Y^2) are kept (float64, summed over calibration batches, whose products are taken
in float32), so memory is bounded by K^2 per layer, whatever the number of images.

lam = alpha * trace(A) / K; alpha is chosen per group from a grid by the error on validation rows
(images not in A), computed from their own normal equations: ||X W - Y||^2 = tr(W^T A_v W) -
2 tr(W^T B_v) + sum(Y_v^2). Keeping W0 is a candidate too, so a refit never makes the validation
error worse. The final W is solved from all rows with the chosen alpha; because W0 is feasible,
its error on those rows is never above W0's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
CHUNK_ROWS = 4096  # rows multiplied at once in float32 before the float64 sum


class NormalEquations:
    """A [G, K, K], B [G, K, O], sum of squares c [G, O], rows counted."""

    def __init__(self, groups: int, unknowns: int, outputs: int):
        self.A = torch.zeros(groups, unknowns, unknowns, dtype=torch.float64)
        self.B = torch.zeros(groups, unknowns, outputs, dtype=torch.float64)
        self.c = torch.zeros(groups, outputs, dtype=torch.float64)
        self.rows = 0

    def add(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        """X [rows, G, K], Y [rows, G, O] (float32)."""
        for start in range(0, X.shape[0], CHUNK_ROWS):
            x, y = X[start:start + CHUNK_ROWS].float(), Y[start:start + CHUNK_ROWS].float()
            self.A += torch.einsum("ngi,ngj->gij", x, x).double()
            self.B += torch.einsum("ngi,ngo->gio", x, y).double()
            self.c += (y.double() ** 2).sum(0)
        self.rows += X.shape[0]

    def error(self, W: torch.Tensor) -> torch.Tensor:
        """||X W - Y||^2 per group, W [G, K, O]."""
        quad = torch.einsum("gko,gkl,glo->g", W, self.A, W)
        return quad - 2 * (W * self.B).sum((1, 2)) + self.c.sum(1)

    def __iadd__(self, other: "NormalEquations") -> "NormalEquations":
        self.A += other.A
        self.B += other.B
        self.c += other.c
        self.rows += other.rows
        return self


@dataclass
class RidgeFit:
    W: torch.Tensor  # [G, K, O] float64
    alphas: list  # per group: the chosen alpha, None where keeping W0 was best
    error_before: float  # validation error with W0, relative to sum(Y_v^2)
    error_after: float  # validation error with the chosen alphas (W0 where kept), relative

    @property
    def changed(self) -> bool:
        return any(a is not None for a in self.alphas)


def _ridge(A: torch.Tensor, B: torch.Tensor, W0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(A + lam I)^-1 (B + lam W0) per group, lam = alpha * mean diagonal of A."""
    k = A.shape[-1]
    lam = alpha * torch.diagonal(A, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(k, dtype=A.dtype)
    M = A + lam[:, None, None] * eye
    rhs = B + lam[:, None, None] * W0
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info == 0).all()):
        return torch.cholesky_solve(rhs, L)
    return torch.linalg.solve(M, rhs)


def ridge_fit(estimate: NormalEquations, validate: NormalEquations, W0: torch.Tensor) -> RidgeFit:
    """Choose alpha per group on `validate`, then solve on both."""
    W0 = W0.double()
    G = W0.shape[0]
    base = validate.error(W0)
    best_err, best_alpha = base.clone(), [None] * G
    for alpha in ALPHAS:
        err = validate.error(_ridge(estimate.A, estimate.B, W0, torch.full((G,), alpha, dtype=torch.float64)))
        for g in range(G):
            if err[g] < best_err[g]:
                best_err[g], best_alpha[g] = err[g], alpha
    total = NormalEquations(G, W0.shape[1], W0.shape[2])
    total += estimate
    total += validate
    chosen = torch.tensor([a if a is not None else 1.0 for a in best_alpha], dtype=torch.float64)
    W = _ridge(total.A, total.B, W0, chosen)
    keep = torch.tensor([a is None for a in best_alpha])
    W[keep] = W0[keep]
    scale = float(validate.c.sum().clamp_min(1e-30))
    return RidgeFit(W, best_alpha, float(base.sum()) / scale, float(best_err.sum()) / scale)
