"""Test-time adaptation without labels: BN-KL feature-statistics alignment (BN affine or normalizer) and Tent
(``methods``), the slices they use (``samples``), BatchNorm statistics (``stats``), the per-volume domain-shift
score (``score``) and segment -> adapt -> segment (``workflow``)."""
