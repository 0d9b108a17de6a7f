"""Few-shot adapters: a small adapter on a frozen model learns a structure from a few painted slices. ``fit``: the
fit; ``support``: the painted slices; ``backbone`` / ``sam``: features of a segmentation model or of LiteMedSAM;
``train``: the training loop; ``warm``: refits from the previous adapter; ``suggest``: the next slice to paint;
``io``: saving and applying adapters; ``workspace``: the dock's jobs."""
