"""Compression without training: `acc shrink MODEL --rate R --data D`.

From a trained model and a few hundred unlabelled calibration images, and no training at all:
- allocation (allocate.py): per-group rates chosen by the search's own machinery (Guidance +
  Annealer, acc/prune/search.py) with a zero-training energy, the output distance to the original
  after one-shot L1 masking and BatchNorm re-estimation, started from the better of uniform rates
  and a global-importance allocation; the finalists are scored again after the full recovery;
- recovery (recover.py): layer-wise least-squares refit of every conv/Gemm that reads pruned
  channels (refit.py, normal_equations.py), then BatchNorm re-estimation (calibration.py) where it
  brings the outputs closer to the original's;
- rewrite and verify as `acc shrink --ratio` does, and a report measured on calibration images the
  fit never saw (shrink.py).
"""
