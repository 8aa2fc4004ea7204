"""Memorization scores for probabilistic deep generative models (van den Burg & Williams, 2021).

Modules, one job each (README.md, "Layout"): experiments (the table), data (loaders), splits
(K-fold), preprocess (batched binarization/dequantization), models, objectives (ELBO), estimator
(importance-sampled log p(x)), evaluation (one model on a set of examples), training (the epoch
loop), ensemble (a vectorized group of models), accel (speed options), results (result files
and their names), checkpoints (resume and weight files), fileio (atomic writes), summary
(U, V, M), uncertainty (bootstrap, reliability), calibration (permutation null), neighbours
(distance ratio), planted (the planted benchmark's data), measures (the other memorization
measures) with copying (1/3 rule), curvature (input-loss curvature), influence (TracIn
self-influence), rankstats (AUROC, ranks), figures.
"""
