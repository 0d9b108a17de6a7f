"""A promptable foundation model as the frozen part of a few-shot fit: any anatomy, any modality.

LiteMedSAM (registry name ``litemedsam``) was trained on over a million medical image-mask pairs of CT, MR and
more, so its image embedding separates structures that no bundled segmentation model knows (CT organs, MR
abdomen). Each axial slice is embedded once (the Segment Anything embedding cache, keyed by slice, window and
model; shared with the Segment Anything dock): 256 channels on a 64 x 64 grid over the slice's longest side.
The few-shot head trains on that map (the adapter on a 1x1 projection to 32 channels); its logits are resized
bilinearly onto each slice's own grid, where the loss is computed. It is a single-channel backbone: one image
of any modality. (The mask decoder's prompt-free upscaled map was tried first: on CT its channels hardly
differ between organs, Fisher score 0.7 against 3.4 for the embedding, and a probe on it did not learn.)
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ModelError
from .backbone import FeatureVolume

if TYPE_CHECKING:

    from ...jobs import JobContext
    from ...sam.predictor import SamPredictor
    from ...session import ModelSession
    from ...volume import Volume
    from .train import FewShotHead

#: Slices per batch of the head when segmenting the volume.
PREDICT_BATCH = 8


def default_window(image: np.ndarray) -> str:
    """The window preset for a volume: CT soft tissue (W400/L40, LiteMedSAM's CT window) when it holds HU
    values below -500, else the MRI percentiles."""
    from ...sam.prompts import AUTO_WINDOW

    return "ct-soft-tissue" if image.size and float(np.min(image)) < -500 else AUTO_WINDOW


class SamBackbone:
    """The slice embeddings of a promptable model on one channel of a volume.

    Parameters
    ----------
    predictor
        The promptable model with its embedding cache (the session's, so the Segment Anything dock and a
        fit share embeddings).
    volume
        The volume; ``channel`` picks the image (default: the first channel).
    channel
        Channel name.
    window
        ``(low, high)`` or a preset name (default :func:`default_window`).
    """

    spatial_dims = 2

    def __init__(
        self, predictor: SamPredictor, volume: Volume, channel: str | None = None, window: Any = None
    ) -> None:
        from ...sam.prompts import resolve_window

        self.predictor = predictor
        self.volume = volume
        self.channel = channel or volume.channels[0]
        self.image = volume.channel(self.channel)
        self.window = resolve_window(self.image, window or default_window(self.image))
        model = predictor.model
        h, w = model.input_size(self.image.shape[1:])
        self.feature_size = (math.ceil(h * model.grid / model.image_size), math.ceil(w * model.grid / model.image_size))
        self.box = tuple(slice(0, n) for n in self.image.shape)
        self.channels = int(model.embed_dim)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``: labels stay on the slices' own grid."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def base_name(self) -> str:
        """The promptable model's registry name."""
        return self.predictor.model.name

    @property
    def base_sha256(self) -> str:
        """The checksum of the promptable model's weights."""
        return self.predictor.model.weights_hash

    def cache_key(self) -> tuple:
        """What the features depend on: the model, the image and the window."""
        digest = hashlib.blake2b(np.ascontiguousarray(self.image).view(np.uint8), digest_size=20).hexdigest()
        return ("fewshot-sam-features", self.predictor.model.model_hash, digest, self.image.shape, self.window)

    def compute(self, device: Any = None, ctx: JobContext | None = None, session: ModelSession | None = None) -> FeatureVolume:
        """The embeddings of every axial slice, over the slice's part of the model input (from the cache where
        present)."""
        from ...jobs import ensure_context

        if session is not None:
            cached = session.cached(self.cache_key())
            if cached is not None:
                return cached
        ctx = ensure_context(ctx)
        start = time.perf_counter()
        depth = self.image.shape[0]
        gh, gw = self.feature_size
        store = np.zeros((self.channels, depth, gh, gw), dtype=np.float16)
        for z in range(depth):
            ctx.progress(z, depth, f"embedding slice {z + 1} of {depth} ({self.base_name})")
            store[:, z] = self.predictor.embedding(self.image[z], self.window)[:, :gh, :gw]
        ctx.progress(depth, depth, "features ready")
        zero_shot = np.zeros(self.image.shape, dtype=np.uint8)  # a promptable model has no answer unprompted
        result = FeatureVolume(store, self.box, zero_shot, time.perf_counter() - start)
        if session is not None:
            session.keep(self.cache_key(), result, store.nbytes)
        return result

    def feature_index(self, axis: int, index: int) -> int:
        """The feature plane holding the label plane ``index`` along ``axis``."""
        if axis == 0:
            return index
        return min(int((index + 0.5) * self.feature_size[axis - 1] / self.image.shape[axis]), self.feature_size[axis - 1] - 1)

    @staticmethod
    def to_grid(plane: np.ndarray, axis: int, index: int) -> tuple[int, np.ndarray]:
        """Labels stay on the source grid."""
        return index, plane

    def trainable(self, method: str, classes: tuple[int, ...]) -> tuple[FewShotHead, FewShotHead, list[int]]:
        """A new head (the whole adapted model of this backbone), twice, and no reused class."""
        from .train import new_head

        if method not in ("adapter", "linear_probe"):
            raise ModelError(
                f"{method} would train the foundation model itself, which is out of reach on a laptop; with "
                f"{self.base_name} use adapter or linear_probe."
            )
        head, _ = new_head(None, (), classes, self.channels, 2, adapter=method == "adapter")
        return head, head, []

    @staticmethod
    def head_of(adapted: FewShotHead) -> FewShotHead:
        """The head itself."""
        return adapted

    def class_names(self, classes: tuple[int, ...]) -> dict[int, str]:
        """Generic names: the backbone has no classes of its own."""
        return {0: "background", **{c: f"label {c}" for c in classes}}

    def predict(
        self, adapted: FewShotHead, classes: tuple[int, ...], device: Any = None, ctx: JobContext | None = None,
        largest_component: bool = False, session: ModelSession | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and float16 probabilities of the head over every slice, on the source grid."""
        import torch
        import torch.nn.functional as F

        from ...jobs import ensure_context
        from ...postprocess import keep_largest_component

        ctx = ensure_context(ctx)
        features = self.compute(device, ctx, session).features
        depth, rows, cols = self.image.shape
        probs = np.empty((len(classes) + 1, depth, rows, cols), dtype=np.float16)
        head = adapted.to(device).eval()
        with torch.inference_mode():
            for first in range(0, depth, PREDICT_BATCH):
                stop = min(first + PREDICT_BATCH, depth)
                x = torch.from_numpy(features[:, first:stop].astype(np.float32)).permute(1, 0, 2, 3).to(device)
                logits = F.interpolate(head(x), (rows, cols), mode="bilinear", align_corners=False)
                probs[:, first:stop] = torch.softmax(logits, dim=1).permute(1, 0, 2, 3).cpu().numpy()
                ctx.progress(stop, depth, f"segmenting slices {first + 1}-{stop} of {depth}")
        lut = np.asarray([0, *classes], dtype=np.uint8)
        labels = lut[np.argmax(probs, axis=0)]
        if largest_component:
            labels, _removed = keep_largest_component(labels)
        return labels, probs
