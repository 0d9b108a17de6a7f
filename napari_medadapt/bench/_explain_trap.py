"""The artifact trap of ``medadapt bench explain``: explaining a false positive on a bright marker.

``tts_trap`` learned to call a bright marker or stripe tumour (its training tumours all carried one). Its
training slices are rebuilt exactly (the recipe's seed); a post-hoc bank (k-means of the decoder features,
projected onto those slices) records whether each prototype's source position lies on a training artifact.
Test slices: phantoms of unseen seeds with a marker painted >= 30 mm from the tumour. For each slice with a
false positive on the marker, the false-positive region and the true tumour are explained: how many of the
top-5 prototypes come from artifact patches? ``glioma2d`` (never shown a marker) is run on the same slices:
where it has a false positive, its top tumour prototypes for that region are forgotten and the false positive
and the tumour Dice are measured again.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

TOP_K = 5


def _trap_bank(args: argparse.Namespace, model: Any) -> tuple[Any, np.ndarray]:
    """The post-hoc bank of ``tts_trap`` on its own training slices, and per prototype: source on an artifact."""
    from napari_medadapt.core.explain import TrainingSlices, kmeans_bank
    from napari_medadapt.core.synth.trap_data import trap_training_slices

    recipe = model.card.training_data
    rng = np.random.default_rng(recipe["seed"])
    pairs = trap_training_slices(model.card, args.data / recipe["real"][0], recipe["phantom_slices"], recipe["seed"], rng)
    images = np.stack([p[0] for p in pairs]).astype(np.float16)
    labels = np.stack([p[1] for p in pairs]).astype(np.uint8)
    sources = [{"case": f"tts_trap training slice {i}", "plane": i} for i in range(len(pairs))]
    slices = TrainingSlices(images, labels, sources, list(model.card.modalities), {"recipe": "medadapt train tts-trap"})
    bank = kmeans_bank(model, slices, per_class=10, seed=args.seed)
    artifact = (images == 1.0).all(axis=1)  # painted pixels carry 1.0 in every channel
    on_artifact = np.array([artifact[p["source"]["plane"], p["source"]["y"], p["source"]["x"]] for p in bank.card["prototypes"]])
    return bank, on_artifact


def _test_slices(args: argparse.Namespace, rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    from napari_medadapt.bench.tts import _artifact_value, _paint_away
    from napari_medadapt.core.synth import make_phantom_slice
    from napari_medadapt.core.volume import Geometry, Volume

    out, seed = [], 800_000 + args.seed * 1000
    while len(out) < count:
        image, labels = make_phantom_slice(seed, tumour_probability=1.0)
        seed += 1
        painted = _paint_away(image, labels > 0, _artifact_value(image), rng) if (labels > 0).sum() >= 250 else None
        if painted is None:
            continue
        geometry = Geometry.from_display_grid((1, *image.shape[1:]), (1.0, 1.0, 1.0))
        out.append({"seed": seed - 1, "volume": Volume(painted[0][:, None], geometry, ("t1", "t1c", "t2", "flair")),
                    "truth": (labels > 0)[None], "artifact": painted[1][None]})
    return out


def _false_positive(labels: np.ndarray, truth: np.ndarray, artifact: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    near = ndimage.binary_dilation(artifact, iterations=3)
    return (labels > 0) & near & ~truth


def run_trap(args: argparse.Namespace, rng: np.random.Generator, count: int = 12) -> dict[str, Any]:
    """The trap experiment's figures (see the module docstring)."""
    from napari_medadapt.core.explain import Explainer, find_bank
    from napari_medadapt.core.metrics import dice
    from napari_medadapt.core.model_input import prepare_model_input
    from napari_medadapt.core.models import load_model

    trap = load_model("tts_trap").eval()
    bank, on_artifact = _trap_bank(args, trap)
    tumour_protos = bank.network_classes == 1
    trap_rows, glioma_rows = [], []
    glioma = load_model("glioma2d").eval()
    glioma_bank = find_bank(glioma)
    for case in _test_slices(args, rng, count):
        volume, truth, artifact = case["volume"], case["truth"], case["artifact"]
        ex = Explainer(trap, bank, prepare_model_input(trap, volume))
        fp = _false_positive(ex.predict(), truth, artifact)
        row: dict[str, Any] = {"seed": case["seed"], "fp_pixels": int(fp.sum())}
        if fp.any():
            for name, region in (("false_positive", fp), ("true_tumour", truth)):
                matches = ex.explain_region(region, top_k=TOP_K).matches
                row[name] = {"top": [m.id for m in matches],
                             "from_artifact": int(sum(bool(on_artifact[m.id]) for m in matches))}
        trap_rows.append(row)
        gx = Explainer(glioma, glioma_bank, prepare_model_input(glioma, volume))
        before = gx.predict()
        gfp = _false_positive(before, truth, artifact)
        grow: dict[str, Any] = {"seed": case["seed"], "fp_pixels": int(gfp.sum()), "dice_before": round(dice(before > 0, truth), 4)}
        if gfp.any():
            explanation = gx.explain_region(gfp, top_k=TOP_K)
            forget = [m.id for m in explanation.matches if m.label != 0][:3]
            gx.forget(forget)
            after = gx.predict()
            grow.update(forgotten=forget, fp_after=int(_false_positive(after, truth, artifact).sum()),
                        dice_after=round(dice(after > 0, truth), 4))
        glioma_rows.append(grow)
        print(f"trap seed {case['seed']}: tts_trap FP {row['fp_pixels']} px, glioma2d FP {grow['fp_pixels']} px", flush=True)
    return {
        "bank_prototypes": len(bank), "tumour_prototypes_on_artifact": int(on_artifact[tumour_protos].sum()),
        "tumour_prototypes": int(tumour_protos.sum()), "top_k": TOP_K, "tts_trap": trap_rows, "glioma2d": glioma_rows,
    }
