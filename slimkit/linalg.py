"""Numerically careful building blocks shared by every method (algorithms.md P1, P2, §9.3).

All inputs are float64 second moments. Damping is δ = 1 % of the mean diagonal unless said otherwise;
solves go through Cholesky and retry with ten times the damping on failure, never through `inverse`.
"""

from __future__ import annotations

import torch

DAMP = 0.01


def damped(H: torch.Tensor, frac: float = DAMP) -> torch.Tensor:
    """H + δI with δ = frac · mean(diag H); a zero matrix gets δ = frac so it stays invertible."""
    diag = H.diagonal()
    delta = frac * float(diag.mean()) if float(diag.mean()) > 0 else frac
    return H + delta * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)


def solve_psd(A: torch.Tensor, B: torch.Tensor, frac: float = DAMP) -> torch.Tensor:
    """X = (A + δI)^{-1} B for symmetric PSD A, with escalating damping if Cholesky fails."""
    for attempt in range(6):
        L, info = torch.linalg.cholesky_ex(damped(A, frac * 10**attempt))
        if int(info) == 0:
            return torch.cholesky_solve(B, L)
    raise torch.linalg.LinAlgError("second-moment matrix is not positive definite even with heavy damping")


def solve_psd_toward(A: torch.Tensor, B: torch.Tensor, prior: torch.Tensor, frac: float = DAMP) -> torch.Tensor:
    """X = (A + δI)^{-1} (B + δ·prior): the ridge solution shrunk towards `prior` instead of towards zero.

    Written as prior + (A + δI)^{-1} (B − A·prior), the same δ (and escalation) as `solve_psd`.
    """
    return prior + solve_psd(A, B - A @ prior, frac)


def eigh_desc(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clamped at 0) and matching eigenvector columns of a symmetric matrix."""
    values, vectors = torch.linalg.eigh(H)
    return values.flip(0).clamp_min(0), vectors.flip(1)


def solve_ridge(A: torch.Tensor, B: torch.Tensor, ridge: float) -> torch.Tensor:
    """X = (A + ridge·I)^{-1} B for symmetric PSD A and an absolute ridge > 0 (FlattenGPT's λ)."""
    L, info = torch.linalg.cholesky_ex(A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device))
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return solve_psd(A + ridge * torch.eye(A.shape[0], dtype=A.dtype, device=A.device), B)


def nystrom_compensation(
    W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, ridge: float | None = None, frac: float = DAMP
) -> torch.Tensor:
    """P2: the W' minimising E‖W h − W' h_S‖² for a consumer W (out × I) of inputs h with moment H.

    W' = W[:, S] + W[:, R] · B with Bᵀ = (H_SS + δI)^{-1} H_SR: δ = `frac` of the mean diagonal of H_SS
    (1 % by default), or the absolute `ridge` (ridge least squares, FlattenGPT). Everything float64.
    """
    mask = torch.zeros(H.shape[0], dtype=torch.bool, device=H.device)
    mask[keep] = True
    drop = (~mask).nonzero().squeeze(1)
    if drop.numel() == 0:
        return W[:, keep].clone()
    A, B = H[keep][:, keep], H[keep][:, drop]
    Bt = solve_psd(A, B, frac) if ridge is None else solve_ridge(A, B, ridge)  # (K, R)
    return W[:, keep] + W[:, drop] @ Bt.T


def reconstruction_error(
    W: torch.Tensor, H: torch.Tensor, W_new: torch.Tensor, P: torch.Tensor, H_new: torch.Tensor, C: torch.Tensor
) -> float:
    """Relative E‖W x − W_new Pᵀ x̃‖² / E‖W x‖², from second moments only.

    H = E[xxᵀ] (target inputs), H_new = E[x̃x̃ᵀ] (compressed-side inputs), C = E[x̃xᵀ], P maps x̃ to the
    compressed coordinates (z = Pᵀ x̃). With x̃ = x and P a selection this is the plain selection error.
    """
    A = W_new @ P.T  # (out, D)
    target = torch.trace(W @ H @ W.T)
    err = target - 2 * torch.trace(A @ C @ W.T) + torch.trace(A @ H_new @ A.T)
    return float(err.clamp_min(0) / target.clamp_min(1e-30))
