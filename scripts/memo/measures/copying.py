"""Sample copying by the "1/3 rule" of the diffusion-memorization work.

A generated sample x counts as a copy of its nearest training example when

    ‖x − NN₁(x)‖₂ / ‖x − NN₂(x)‖₂ < 1/3,

NN₁ and NN₂ its nearest and second-nearest training examples: x is much closer to one training
image than to any other. The rule is from Yoon et al., "Diffusion probabilistic models generalize
when they fail to memorize" (ICML 2023 workshop), used as the memorization ratio of Gu et al.,
"On Memorization in Diffusion Models" (arXiv:2310.02664; their `mem_ratio.py` with `--knn-ref`
the training set): the share of generated samples that are copies.

Here the samples are VAE decoder means (`sample_images`), compared in pixel space [0, 1] with the
training images as given (the caller chooses the resolution; no pooling is applied). Exact
duplicates among the training images are collapsed first, so that a sample next to an image that
occurs twice is not ruled "no copy" by a second-nearest distance of 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memo.measures.neighbours import check_blocks
from memo.train.accel import exact_float32
from memo.score.flagging import clopper_pearson


def distinct_rows(x: torch.Tensor):
    """Exact duplicate rows of x (m, D) collapsed: (unique (u, D), inverse (m,), first (u,)).

    unique[inverse] == x; first[j] is the index in x of the first occurrence of unique[j]
    (both int64). unique is in torch.unique's (sorted) order.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (m, D); got {tuple(x.shape)}")
    unique, inverse = torch.unique(x, dim=0, return_inverse=True)
    inverse = inverse.to(torch.int64)
    position = torch.arange(x.shape[0], dtype=torch.int64, device=x.device)
    first = torch.full((unique.shape[0],), x.shape[0], dtype=torch.int64, device=x.device)
    first = first.scatter_reduce(0, inverse, position, reduce="amin")
    return unique, inverse, first


def _rows(references: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return references[index.to(references.device)].to(device=like.device, dtype=like.dtype)


def nearest_two(queries: torch.Tensor, references: torch.Tensor, block_rows: int = 4096,
                block_cols: int = 8192, dtype=torch.float64):
    """Each query's nearest and second-nearest reference: (d1 (n,), d2 (n,), nearest (n,)).

    The approach of neighbours.nearest_distances: blocks over queries and references bound the
    memory to one block_rows × block_cols matrix of squared distances ‖a‖² + ‖b‖² − 2a·b in
    float64, a running top-2 (values and indices) is kept per row, and the two chosen
    distances are then recomputed from exact differences (an exact duplicate gives exactly 0).
    Ties go to the lower reference index. references should be distinct rows (see
    `distinct_rows`); otherwise d2 may be 0. With a single reference d2 = inf.
    Work happens on the queries' device; results are float64 (d1, d2) and int64 (nearest), on
    the CPU.
    """
    check_blocks(queries, references, block_rows, block_cols)
    n, u = queries.shape[0], references.shape[0]
    inf = float("inf")
    d1 = torch.empty(n, dtype=torch.float64)
    d2 = torch.full((n,), inf, dtype=torch.float64)
    nearest = torch.empty(n, dtype=torch.int64)
    ref_blocks = []
    for c in range(0, u, block_cols):
        r = references[c:c + block_cols].to(device=queries.device, dtype=dtype)
        ref_blocks.append((c, r, (r * r).sum(1)))
    with torch.no_grad():
        for s in range(0, n, block_rows):
            q = queries[s:s + block_rows].to(dtype)
            b = q.shape[0]
            qn = (q * q).sum(1)
            # running top-2 per row; the lists below are in order of reference index, so a
            # stable sort keeps the lower index on ties
            top_val = torch.full((b, 2), inf, dtype=dtype, device=q.device)
            top_idx = torch.full((b, 2), -1, dtype=torch.int64, device=q.device)
            for c, r, rn in ref_blocks:
                sq = (qn[:, None] + rn[None, :] - 2.0 * (q @ r.T)).clamp_(min=0)  # (b, cols)
                v1, i1 = sq.min(dim=1)                 # first minimum: the lowest index
                if sq.shape[1] > 1:
                    sq.scatter_(1, i1[:, None], inf)
                    v2, i2 = sq.min(dim=1)
                else:
                    v2, i2 = torch.full_like(v1, inf), torch.full_like(i1, -1)
                vals = torch.cat([top_val, v1[:, None], v2[:, None]], dim=1)       # (b, 4)
                idxs = torch.cat([top_idx, (i1 + c)[:, None],
                                  torch.where(i2 >= 0, i2 + c, i2)[:, None]], dim=1)
                # candidates in index order: running (earlier blocks) first, then this block's
                order = torch.sort(vals, dim=1, stable=True).indices[:, :2]
                top_val, top_idx = vals.gather(1, order), idxs.gather(1, order)
            # exact distances to the two chosen references
            e1 = ((q - _rows(references, top_idx[:, 0], q)) ** 2).sum(1)
            if u > 1:
                e2 = ((q - _rows(references, top_idx[:, 1], q)) ** 2).sum(1)
                # near-ties may be ordered by rounding; the exact values decide
                swap = e2 < e1
                e1, e2 = torch.where(swap, e2, e1), torch.where(swap, e1, e2)
                top_idx[:, 0] = torch.where(swap, top_idx[:, 1], top_idx[:, 0])
                d2[s:s + b] = e2.double().sqrt().cpu()
            d1[s:s + b] = e1.double().sqrt().cpu()
            nearest[s:s + b] = top_idx[:, 0].cpu()
    return d1, d2, nearest


def is_copy(d1, d2, threshold: float = 1 / 3):
    """d1/d2 < threshold, elementwise: d1 = 0 < d2 is a copy; 0/0 (d2 = 0) is not; d2 = inf is
    (ratio 0). Tensors give a bool tensor, numbers a bool."""
    scalar = not (torch.is_tensor(d1) or torch.is_tensor(d2)
                  or np.ndim(d1) or np.ndim(d2))
    ratio = torch.as_tensor(d1, dtype=torch.float64) / torch.as_tensor(d2, dtype=torch.float64)
    out = ratio < threshold  # nan (0/0) compares False
    return bool(out) if scalar else out


@dataclass
class CopyResult:
    is_copy: torch.Tensor             # (n,) bool: the query copies its nearest training example
    nearest: torch.Tensor             # (n,) int64 index into training (first of its duplicates)
    d1: torch.Tensor                  # (n,) float64 distance to the nearest distinct image
    d2: torch.Tensor                  # (n,) float64 distance to the second-nearest distinct image
    ratio: float                      # share of queries that are copies
    interval: tuple[float, float]     # Clopper–Pearson interval of `ratio` at `level`
    copies_per_example: torch.Tensor  # (m,) int64 queries copying each training example
    threshold: float
    level: float
    n_distinct: int                   # distinct training images the distances went to


def _check_unit_interval(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be float in [0, 1] or uint8; got {x.dtype}")
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"{name} must lie in [0, 1] (pixel space, not logits)")
    return x


def copying(queries: torch.Tensor, training: torch.Tensor, threshold: float = 1 / 3,
            level: float = 0.95, block_rows: int = 4096, block_cols: int = 8192) -> CopyResult:
    """The 1/3 rule for every query (n, D) against the training images (m, D), pixel space.

    queries: float in [0, 1]; training: float in [0, 1] or uint8 (divided by 255).
    Distances go to the distinct training images, so exact duplicates in the training set
    never give d2 = 0. `nearest` names the first occurrence of the nearest image, and
    copies_per_example[i] counts the queries that copy training image i's content: every
    duplicate of one image gets that image's full count (so the counts sum to the number of
    copies only when the training set has no duplicates).
    """
    queries = _check_unit_interval(queries, "queries")
    training = _check_unit_interval(training, "training")
    if training.dim() != 2 or training.shape[0] == 0:
        raise ValueError(f"training must be (m, D) with m > 0; got {tuple(training.shape)}")
    unique, inverse, first = distinct_rows(training.cpu())
    d1, d2, near_unique = nearest_two(queries.cpu(), unique, block_rows, block_cols)
    copy = is_copy(d1, d2, threshold)
    count_unique = torch.bincount(near_unique[copy], minlength=unique.shape[0])
    k, n = int(copy.sum()), int(copy.numel())
    return CopyResult(is_copy=copy, nearest=first[near_unique], d1=d1, d2=d2,
                      ratio=k / n if n else float("nan"),
                      interval=clopper_pearson(k, n, level),
                      copies_per_example=count_unique[inverse].to(torch.int64),
                      threshold=threshold, level=level, n_distinct=int(unique.shape[0]))


def sample_images(model, n: int, generator: torch.Generator, batch: int = 512) -> torch.Tensor:
    """(n, C·H·W) float32 samples in pixel space [0, 1], on the CPU: the model's samples for the
    1/3 rule here, the nearest neighbours (scripts/nearest_neighbours.py views them as images
    to pool them) and the size sweep alike.

    The model's `sample` (memo/models/interface.py): all draws first, from `generator` (on its
    device), so a sample depends on the generator and its position, not on `batch`; decoded
    `batch` at a time in eval mode (restored afterwards) without gradients. Here also in IEEE
    float32 (no TF32, as every evaluation: devices agree). The VAEs' samples are decoder means:
    the MLP's sigmoid probabilities, the DCVAEs' logit-space mean mapped back by
    preprocess.from_logit (clamped to [0, 1]); the clamp here only guards rounding.
    """
    with exact_float32():
        images = model.sample(n, generator, batch)   # (n, C, H, W) on the model's device
    return images.flatten(1).clamp(0, 1).to("cpu", torch.float32)
