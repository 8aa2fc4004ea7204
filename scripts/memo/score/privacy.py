"""What a DP-SGD guarantee says about the memorization score M (docs/privacy.md).

M_i = log E_in p(x_i) − log E_out p(x_i), where E_in averages over the fold models whose
training set contains x_i and E_out over those whose set does not. In K-fold cross-validation
both kinds of set have the same size m, so an in-set is an out-set with one example swapped
for x_i: a substitution, which is a removal (of the swapped example) then an addition (of x_i).
DP-SGD's accountant gives the Rényi-DP curve ε(α) of the add/remove relation (Mironov, Talwar
and Zhang 2019 show that the sampled Gaussian mechanism's curve bounds both directions), so
with P the distribution of a model trained on the shared m − 1 examples, Hölder's inequality
twice gives, for any α, β > 1 with α′ = α/(α − 1), β′ = β/(β − 1):

    log E_in p ≤ (1 − 1/α) ε(α) + (1/α′) log E_P[p^α′]
    log E_P[p^γ] ≤ (1 − 1/β) ε(β) + (1/β′) log E_out[p^(γβ′)]

    M ≤ B = min over α, β of  (1 − 1/α) ε(α) + (1 − 1/β) ε(β) / α′
                               + log E_out[p^(α′β′)] / (α′β′) − log E_out[p]

(the mixtures over training sets keep the bound by the joint convexity of exp((α − 1) D_α)).
The last two terms are ≥ 0 and grow with the spread of p over the out-models; they are
estimated from the example's own out-values (one per repeat), so B is a plug-in estimate: with
few repeats it sees little of that spread and can come out low. The bound holds for any δ,
because it uses the Rényi curve, not the (ε, δ) statement made from it.

The curve of one step is the sampled Gaussian mechanism's, D_α((1 − q) N(0, σ²) + q N(1, σ²)
‖ N(0, σ²)), computed here by quadrature of the one-dimensional integral for any real α > 1
(tests check it against Opacus's series); T steps compose to T times it. The sample rate q,
σ and T come from the fold models' result files: n, and so q and σ, are treated as public.
"""
from __future__ import annotations

import numpy as np

# Rényi orders searched for α and β: dense near 1 (a loose budget wants α′ large), sparse above
ORDERS = np.concatenate([1 + np.geomspace(0.005, 1, 24)[:-1], np.geomspace(2, 256, 24)])


def sampled_gaussian_rdp(q: float, sigma: float, steps: int, orders=ORDERS) -> np.ndarray:
    """ε(α) of `steps` compositions of the Poisson-subsampled Gaussian mechanism with sample
    rate q and noise multiplier σ (sensitivity 1), at each order α > 1, in nats."""
    orders = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if not (0 <= q <= 1) or not sigma > 0 or steps < 0 or np.any(orders <= 1):
        raise ValueError(f"need 0 <= q <= 1, sigma > 0, steps >= 0 and orders > 1 "
                         f"(got q={q}, sigma={sigma}, steps={steps})")
    if q == 0 or steps == 0:
        return np.zeros_like(orders)
    if q == 1:  # no subsampling: the Gaussian mechanism's α / (2σ²)
        return steps * orders / (2 * sigma ** 2)
    out = np.empty_like(orders)
    for j, a in enumerate(orders):
        # log E_{z ~ N(0, σ²)} [((1 − q) + q e^{(2z − 1) / 2σ²})^α]: the integrand's mass lies
        # near 0 and near z = α (where the second term dominates), each with width σ
        z = np.linspace(-14 * sigma, a + 14 * sigma + 1, int(40 * (a + 28 * sigma + 1) / sigma) + 2001)
        log_mix = np.logaddexp(np.log1p(-q), np.log(q) + (2 * z - 1) / (2 * sigma ** 2))
        log_f = -z ** 2 / (2 * sigma ** 2) - np.log(sigma * np.sqrt(2 * np.pi)) + a * log_mix
        top = log_f.max()
        w = np.exp(log_f - top)
        log_a = top + np.log(np.trapezoid(w, z))
        out[j] = max(log_a, 0.0) / (a - 1)
    return steps * out


def curve(records) -> np.ndarray:
    """ε(α) on ORDERS bounding every model of `records` (dicts with sample_rate,
    noise_multiplier and steps): their pointwise maximum."""
    eps = np.zeros_like(ORDERS)
    for r in {(float(r["sample_rate"]), float(r["noise_multiplier"]), int(r["steps"]))
              for r in records}:
        eps = np.maximum(eps, sampled_gaussian_rdp(*r))
    return eps


def _log_mean_exp(v: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(v, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.mean(np.exp(v - top), axis=axis))


def substitution_bound(out_values: np.ndarray, eps: np.ndarray, orders=ORDERS) -> np.ndarray:
    """(n,) the bound B on M of each example (module docstring) from its out-values
    out_values (k, n): log p under the k models that did not train on it; eps: ε(α) at
    `orders`. Columns with a non-finite value give nan."""
    v = np.asarray(out_values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"out_values has shape {v.shape}, expected (models, examples)")
    orders = np.asarray(orders, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64)
    budget = (1 - 1 / orders) * eps                   # (1 − 1/α) ε(α)
    conj = orders / (orders - 1)                      # α′
    # every (α, β) pair: privacy part and the exponent γ = α′β′ of the spread part
    privacy = budget[:, None] + budget[None, :] / conj[:, None]
    gamma = conj[:, None] * conj[None, :]
    ok = np.isfinite(v).all(0)
    out = np.full(v.shape[1], np.nan)
    if not ok.any():
        return out
    w = v[:, ok]
    base = _log_mean_exp(w, axis=0)                   # log E_out p, (n,)
    best = np.full(w.shape[1], np.inf)
    for g, p in zip(gamma.ravel(), privacy.ravel()):
        spread = _log_mean_exp(g * w, axis=0) / g - base
        np.minimum(best, p + spread, out=best)
    out[ok] = best
    return out


def out_values(values: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """(R, n) each example's log p under the fold model that held it out, per repeat, from the
    summary's values (R, K, n) and held-out folds (R, n)."""
    values = np.asarray(values)
    held = np.asarray(held_out, dtype=np.int64)
    return np.take_along_axis(values, held[:, None, :], axis=1)[:, 0, :]


def summary_bound(s) -> np.ndarray | None:
    """(n,) the bound B on each example's M of a private summary (memo.files.summary), or None
    when the summary is not private, holds no fold model's values, or predates the recorded
    fold privacy (meta["privacy"]["fold_models"])."""
    records = ((s.meta.get("privacy") or {}).get("fold_models") or [])
    if not records or not s.values.size:
        return None
    return substitution_bound(out_values(s.values, s.held_out), curve(records))
