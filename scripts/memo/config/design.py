"""The design a user experiment gets when its experiments file leaves out folds or repeats.

The default test is the moderated repeat-paired t-test (memo.score.flagging). Its p-values come
from a t distribution with L·(K−2) degrees of freedom plus the prior's, which is continuous: it
has no floor, so any design with K ≥ 3 can in principle reach the q/n that Benjamini–Hochberg
needs for a first flag (unlike the permutation test, whose smallest p is 1/K^L or 1/(permutations
+ 1)). Whether it flags in practice is a matter of power, so the default rests on the design
table of docs/calibration.md (2,000 images, q = 5 %): K = 5, L = 2 (11 models) is the smallest
measured design with repeats that flags there: 5 of 20 planted singletons and 113 of 2,000 demo
images, with at most 3 of 1,000 controls past the threshold. L = 1 flags too (3 of 20) but leaves
no repeats for the interval and the split-half reliability of M.
"""
DEFAULT_FOLDS = 5
DEFAULT_REPEATS = 2


def models(folds: int, repeats: int) -> int:
    """Models a design trains: K·L fold models and the full model."""
    return folds * repeats + 1


def fill(spec: dict) -> dict:
    """An experiments file's fields with folds and repeats set to the default where left out."""
    return {"folds": DEFAULT_FOLDS, "repeats": DEFAULT_REPEATS, **spec}


def t_test_problem(folds: int, test: str, n_perm: int) -> str | None:
    """Why a design cannot flag anything under a t-test (memo.score.flagging), or None. The
    permutation test's floor on p is memo.score.calibration.design_note's to say."""
    if n_perm == 0:
        return "n_perm = 0 switches the calibration off: no p-values, nothing is flagged"
    if test in ("t", "moderated-t") and folds < 3:
        return (f"K = {folds} leaves one in-value per repeat: the {test} test has no variance "
                f"to test against and flags nothing (K >= 3; the default K = {DEFAULT_FOLDS})")
    return None
