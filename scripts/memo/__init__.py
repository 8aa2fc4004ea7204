"""Memorization scores for probabilistic deep generative models (van den Burg & Williams, 2021).

A folder per stage of the pipeline, one job per module (README.md, "Layout"; who may import
whom: tests/test_layout.py): config (the experiment table, splits, names; no torch), data (the
images), models (the VAEs and the interface the pipeline uses them through), train (training
and evaluating them: result files and weights), files (the files between the stages, one owner
each; no torch), score (U, V, M and their calibration and flags; no torch), measures (the other
memorization measures), figures (the figures and the report); errors (the base error) and fileio
(atomic writes) serve them all.
"""
