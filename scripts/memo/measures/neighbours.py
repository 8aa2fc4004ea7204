"""Nearest-neighbour distance ratio (the paper's nearest-neighbour figure).

    ρ_i = d(x_i, nearest validation image) / d(x_i, nearest model sample)

d is the Euclidean distance between images average-pooled 2×2 to 16×16, in pixel space [0, 1]
(uint8 / 255; grayscale keeps its one channel, colour its three). ρ > 1: the model has produced
something closer to x_i than anything in the held-out data.

Two defects of the original analysis are avoided here: every query row takes its own minimum
(not row 0's of its batch), and "the top 5 % by M" is taken by percentile
(memo.figures.common.highly_memorized).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Codes of `distance_ratio`'s special cases (exact duplicates give zero distances).
REGULAR = 0
VALID_DUPLICATE = 1   # d_valid == 0 < d_model: x_i is in the validation set; ρ = 0
MODEL_DUPLICATE = 2   # d_model == 0 < d_valid: a model sample equals x_i exactly; ρ = +inf
BOTH_DUPLICATE = 3    # d_valid == d_model == 0: 0/0; ρ = nan
INVALID = 4           # a distance is nan/inf/negative (should not happen); ρ = nan
SPECIAL_NAMES = {VALID_DUPLICATE: "valid_duplicate", MODEL_DUPLICATE: "model_duplicate",
                 BOTH_DUPLICATE: "both_duplicate", INVALID: "invalid"}


def downsample(images: torch.Tensor) -> torch.Tensor:
    """(N, C, 32, 32) images → (N, C·16·16) float32 vectors in [0, 1], 2×2 average pooling.

    uint8 input is divided by 255; float input is taken to be in [0, 1] already (decoder means).
    """
    x = images.to(torch.float32)
    if images.dtype == torch.uint8:
        x = x / 255.0
    return F.avg_pool2d(x, 2).flatten(1)


def check_blocks(queries: torch.Tensor, references: torch.Tensor, block_rows: int,
                 block_cols: int) -> None:
    """ValueError unless queries (n, D) and references (m > 0, D) can be compared blockwise."""
    if queries.dim() != 2 or references.dim() != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries (n, D) and references (m, D) must share D; got "
                         f"{tuple(queries.shape)} and {tuple(references.shape)}")
    if references.shape[0] == 0:
        raise ValueError("no reference vectors")
    if block_rows < 1 or block_cols < 1:
        raise ValueError("block sizes must be positive")


def nearest_distances(queries: torch.Tensor, references: torch.Tensor, block_rows: int = 4096,
                      block_cols: int = 8192, device=None, dtype=torch.float64,
                      progress: bool = False, desc: str | None = None):
    """Each query's nearest reference: (dist (n,), argmin (n,)), both on the CPU.

    Memory is bounded by blocking over both queries (rows) and references (columns): at most a
    block_rows × block_cols matrix of squared distances exists at once, and a running minimum
    with its index is kept per row, so every row gets its own minimum.

    Squared distances come from ‖a‖² + ‖b‖² − 2a·b (clamped at 0), computed in `dtype`
    (float64 by default: its rounding error, ~1e-13·‖a‖², is far below the ~1e-6 squared
    spacing of distinct pooled 8-bit images, so an exact duplicate is always the one chosen).
    The reported distance is then recomputed from exact differences with the chosen
    neighbour, so cancellation cannot bias it and an exact duplicate gives exactly 0.
    Ties go to the lowest reference index.
    """
    check_blocks(queries, references, block_rows, block_cols)
    n, m = queries.shape[0], references.shape[0]
    device = torch.device(device) if device is not None else queries.device
    best_d2 = torch.empty(n, dtype=dtype)
    best_idx = torch.empty(n, dtype=torch.int64)
    # reference blocks and their squared norms, prepared once
    ref_blocks = []
    for c in range(0, m, block_cols):
        r = references[c:c + block_cols].to(device=device, dtype=dtype)
        ref_blocks.append((c, r, (r * r).sum(1)))
    n_row_blocks = -(-n // block_rows)
    from tqdm import tqdm
    with torch.no_grad(), tqdm(total=n_row_blocks * len(ref_blocks), desc=desc, unit="block",
                               disable=not progress) as bar:
        for s in range(0, n, block_rows):
            q = queries[s:s + block_rows].to(device=device, dtype=dtype)
            qn = (q * q).sum(1)
            run_d2 = torch.full((q.shape[0],), float("inf"), dtype=dtype, device=device)
            run_idx = torch.zeros(q.shape[0], dtype=torch.int64, device=device)
            for c, r, rn in ref_blocks:
                d2 = (qn[:, None] + rn[None, :] - 2.0 * (q @ r.T)).clamp_(min=0)
                val, idx = d2.min(dim=1)
                better = val < run_d2          # strict: earlier blocks keep ties
                run_d2 = torch.where(better, val, run_d2)
                run_idx = torch.where(better, idx + c, run_idx)
                bar.update(1)
            # exact distance to the chosen neighbour
            nn = references[run_idx.to(references.device)].to(device=device, dtype=dtype)
            best_d2[s:s + q.shape[0]] = ((q - nn) ** 2).sum(1).cpu()
            best_idx[s:s + q.shape[0]] = run_idx.cpu()
    return best_d2.sqrt(), best_idx


def distance_ratio(d_valid, d_model):
    """ρ = d_valid / d_model, with exact duplicates (zero distances) handled explicitly.

    Returns (rho, code): float64 arrays (n,) and int8 (n,) special-case codes:
      REGULAR          both > 0: the plain ratio.
      VALID_DUPLICATE  d_valid = 0 < d_model: x_i also occurs in the validation set; ρ = 0
                       (the ratio is well defined: held-out data match x_i at least as well as
                       any sample could).
      MODEL_DUPLICATE  d_model = 0 < d_valid: a model sample reproduces x_i exactly; ρ = +inf,
                       the limit of the ratio as d_model → 0 (maximal "closer to the model").
      BOTH_DUPLICATE   both 0: 0/0 has no value; ρ = nan. No choice (e.g. 1) would be neutral
                       for histograms and bin means, so these are left out of them and counted.
      INVALID          a distance is nan, infinite or negative; ρ = nan.
    Nothing becomes nan or inf silently: every such entry carries a non-zero code, and
    `special_counts(code)` counts them for reporting.
    """
    dv = np.asarray(d_valid, dtype=np.float64)
    dm = np.asarray(d_model, dtype=np.float64)
    if dv.shape != dm.shape:
        raise ValueError(f"d_valid and d_model differ in shape: {dv.shape} vs {dm.shape}")
    code = np.full(dv.shape, REGULAR, dtype=np.int8)
    bad = ~(np.isfinite(dv) & np.isfinite(dm) & (dv >= 0) & (dm >= 0))
    zv, zm = (dv == 0) & ~bad, (dm == 0) & ~bad
    code[zv & ~zm] = VALID_DUPLICATE
    code[zm & ~zv] = MODEL_DUPLICATE
    code[zv & zm] = BOTH_DUPLICATE
    code[bad] = INVALID
    rho = np.full(dv.shape, np.nan)
    ok = (code == REGULAR) | (code == VALID_DUPLICATE)
    rho[ok] = dv[ok] / dm[ok]
    rho[code == MODEL_DUPLICATE] = np.inf
    return rho, code


def special_counts(code) -> dict[str, int]:
    """{name: count} of each special case in a `distance_ratio` code array."""
    code = np.asarray(code)
    return {name: int((code == c).sum()) for c, name in SPECIAL_NAMES.items()}
