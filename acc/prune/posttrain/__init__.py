"""Compression without training: `acc shrink MODEL --rate R --data D`.

From a trained model and a few hundred unlabelled calibration images, and no training at all:
- channel choice (selection.py): in each group, the channels whose loss the next layers' least
  squares can best make up for go first (greedy elimination on the normal equations), not the
  smallest L1 norms;
- allocation (allocate.py): per-group rates chosen by the search's own machinery (Guidance +
  Annealer, acc/prune/search.py) with a zero-training energy, the output distance to the original
  after one-shot masking and BatchNorm re-estimation, started from the better of uniform rates
  and a global-importance allocation; the finalists are scored again after the full recovery;
- recovery (recover.py): layer-wise least-squares refit of every conv/Gemm that reads pruned
  channels (refit.py, normal_equations.py), then BatchNorm re-estimation (calibration.py) where it
  brings the outputs closer to the original's;
- rewrite and verify as `acc shrink --ratio` does, and a report measured on calibration images the
  fit never saw (shrink.py).

The same recovery runs right after the hard prune of `acc prune` / `acc compile` (after_cut.py),
on CUT_RECOVERY_IMAGES training images unless told otherwise (--recover-cut).
"""

CUT_RECOVERY_IMAGES = 512  # here, not in after_cut.py: the CLI and the API read it without importing torch
