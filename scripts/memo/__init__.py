"""Memorization scores for probabilistic deep generative models (van den Burg & Williams, 2021).

Modules, one job each: experiments (the table), data (loaders), preprocess (batched
binarization/dequantization), models, objectives (ELBO), estimator (importance-sampled
log p(x)), splits (K-fold), results (result files), training (one job), summary (U, V, M),
uncertainty (bootstrap), neighbours (distance ratio), figures.
"""
