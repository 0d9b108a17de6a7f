"""``medadapt bench segfm``: the CVPR 2025 interactive 3D protocol, in-process, on the real cases.

Cases are made from ``--data`` with the challenge's box rule (``core.segfm.protocol.boxes_from_labels``): the
abdominal CT's organs (window level 40 / width 400, i.e. [-160, 240] HU, to uint8, as the challenge's CT
preprocessing) and the glioma fg6692's FLAIR whole tumour (uint8 by the 0.5-99.5 percentiles of the non-zero
voxels). ``--dev`` makes the cases used to choose settings instead (CT organs that are not scored; glioma du7294's
whole tumour on FLAIR and T2 and tumour core on T1c; synthetic gliomas that the click decoder never saw).
Each (model, variant) runs the protocol through the npz contract: step 0 the boxes, then 5 steps with one
simulated click per class, the previous prediction passed back; DSC and NSD (2 mm) per step, DSC_AUC / NSD_AUC
over the 5 click steps, final DSC / NSD, seconds per interaction (the slabs' embeddings are computed first, so
every step runs with cached embeddings; that time is reported apart). Variants: ``slice`` (a click re-predicts
its slice only, the old way) and ``object`` (the click updates the 3D object).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_medadapt.bench._common import add_data_argument, add_report_arguments, resolve_paths, write_json

HELP = "CVPR 2025 interactive 3D protocol (box + 5 clicks; DSC, NSD, DSC_AUC, s/interaction)"
CT_WINDOW = (-160.0, 240.0)
#: TotalSegmentator ids of the scored CT organs, and of the organs used to choose settings (--dev)
CT_ORGANS = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 6: "stomach", 4: "gallbladder",
             7: "pancreas", 52: "aorta"}
CT_DEV_ORGANS = {63: "inferior_vena_cava", 19: "duodenum", 88: "iliopsoas_left", 64: "portal_vein_and_splenic_vein",
                 8: "adrenal_gland_right", 9: "adrenal_gland_left", 18: "small_bowel", 20: "colon", 31: "vertebrae_L1",
                 89: "iliopsoas_right", 86: "autochthon_left", 79: "spinal_cord"}
#: synthetic gliomas among the settings cases: held out from the click decoder's training (phantoms 0 and 1)
DEV_PHANTOM_SEEDS = (101, 102, 103, 104, 105, 106)
VARIANTS = {"slice": "clicks on one slice only", "object": "3D object update"}
#: ``SliceEngine`` settings that ``--agree-iou``, ``--travel``, ... override
ENGINE_OVERRIDES = ("agree_iou", "travel", "click_scope", "ignored_click", "ignored_negative", "click_claims")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options."""
    add_data_argument(parser)
    add_report_arguments(parser, "segfm")
    parser.add_argument("--models", default="litemedsam-clicks,litemedsam", help="comma-separated registry names")
    parser.add_argument("--variants", default="slice,object", help="comma-separated: slice, object")
    parser.add_argument("--cases", default="ct,glioma", help="comma-separated: ct, glioma")
    parser.add_argument("--dev", action="store_true", help="the cases for choosing settings (not scored)")
    parser.add_argument("--agree-iou", type=float, default=None, help="override the engine's agree_iou")
    parser.add_argument("--box-stops", action="store_true", help="box propagation stops on IoU/area jumps")
    parser.add_argument("--travel", choices=("local", "replace"), default=None, help="override the engine's travel")
    parser.add_argument("--click-scope", choices=("slice", "local", "sign", "connected"), default=None,
                        help="override the click scope")
    parser.add_argument("--ignored-click", choices=("keep", "region", "click-box"), default=None,
                        help="override what a positive click the model's answer leaves out does")
    parser.add_argument("--ignored-negative", choices=("keep", "cut-box"), default=None,
                        help="override what a negative click the model's answer keeps does")
    parser.add_argument("--click-claims", choices=("near", "slice"), default=None,
                        help="override where a click may take other objects' voxels")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="compute device")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep slice embeddings on disk here (reruns)")
    parser.add_argument("--organs", default=None, help="comma-separated TotalSegmentator ids (default: the table's)")


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    # (x, y, z) file order -> (z, y, x), as SimpleITK's GetArrayFromImage gives the challenge
    return np.transpose(data, (2, 1, 0)), (zooms[2], zooms[1], zooms[0])


def make_cases(data: Path, names: list[str], dev: bool, organ_ids: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """The benchmark's cases: ``{name: {imgs, gts, spacing, boxes, classes}}``."""
    from napari_medadapt.core.intensity import percentile_range
    from napari_medadapt.core.segfm import boxes_from_labels, relabel_sequential

    cases: dict[str, dict[str, Any]] = {}
    if "ct" in names:
        folder = data / "ct_abdomen_totalseg_example"
        ct, spacing = _load(folder / "ct.nii.gz")
        seg, _ = _load(folder / "seg.nii.gz")
        organs = CT_DEV_ORGANS if dev else CT_ORGANS
        if organ_ids:
            organs = {i: {**CT_ORGANS, **CT_DEV_ORGANS}.get(i, f"id {i}") for i in organ_ids}
        labels = np.zeros(seg.shape, np.uint8)
        for k, organ_id in enumerate(organs, start=1):
            labels[seg == organ_id] = k
        lo, hi = CT_WINDOW
        imgs = np.rint((np.clip(ct.astype(np.float32), lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
        gts = relabel_sequential(labels)
        cases["ct_abdomen" + ("_dev" if dev else "")] = {
            "imgs": imgs, "gts": gts, "spacing": spacing, "boxes": boxes_from_labels(gts), "classes": list(organs.values()),
        }
    if "glioma" in names:
        case = "glioma_tcga_du7294" if dev else "glioma_tcga_fg6692"
        # (suffix, sequence, labels of seg_fusion, class name): the dev case also gives its whole tumour on T2 and
        # its tumour core on T1c (du7294 has no enhancing label)
        targets = [("wt", "flair", (1, 2, 4), "whole tumour")]
        if dev:
            targets += [("wt_t2", "t2", (1, 2, 4), "whole tumour"), ("tc", "t1c", (1, 4), "tumour core")]
        seg, _ = _load(data / case / "seg_fusion.nii.gz")
        for suffix, sequence, label_values, class_name in targets:
            image, spacing = _load(data / case / f"{sequence}.nii.gz")
            lo, hi = percentile_range(image, 0.5, 99.5)
            imgs = np.rint((np.clip(image.astype(np.float32), lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
            imgs[image == 0] = 0
            gts = np.isin(seg, label_values).astype(np.uint8)
            cases[f"{case}_{suffix}"] = {"imgs": imgs, "gts": gts, "spacing": spacing, "boxes": boxes_from_labels(gts),
                                         "classes": [class_name]}
        if dev:
            cases.update(_phantom_cases())
    return cases


def _phantom_cases() -> dict[str, dict[str, Any]]:
    """Synthetic gliomas (``core.synth``, 1 mm), uint8 by the non-zero 0.5-99.5 percentiles: the whole tumour on
    FLAIR (phantoms 101-103) and on T2, and the tumour core (labels 1, 4) on T1c (phantoms 101-106)."""
    from napari_medadapt.core.intensity import percentile_range
    from napari_medadapt.core.segfm import boxes_from_labels
    from napari_medadapt.core.synth import MODALITIES, make_phantom_volume

    cases = {}
    for seed in DEV_PHANTOM_SEEDS:
        images, labels = make_phantom_volume(seed)
        targets = [("t2", (1, 2, 4), "whole tumour"), ("t1c", (1, 4), "tumour core")]
        if seed in DEV_PHANTOM_SEEDS[:3]:
            targets.insert(0, ("flair", (1, 2, 4), "whole tumour"))
        for sequence, label_values, class_name in targets:
            image = images[MODALITIES.index(sequence)]
            lo, hi = percentile_range(image, 0.5, 99.5)
            imgs = np.rint((np.clip(image, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
            imgs[image == 0] = 0
            gts = np.isin(labels, label_values).astype(np.uint8)
            name = f"phantom_{seed}_{sequence}_{'wt' if class_name == 'whole tumour' else 'tc'}"
            cases[name] = {"imgs": imgs, "gts": gts, "spacing": (1.0, 1.0, 1.0), "boxes": boxes_from_labels(gts),
                           "classes": [class_name]}
    return cases


class CountingPredictor:
    """A ``SamPredictor`` that counts and times its decodes (everything else passes through)."""

    def __init__(self, predictor: Any) -> None:
        self._inner = predictor
        self.decodes = 0
        self.decode_seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """The inner predictor's ``predict``, counted and timed."""
        start = time.perf_counter()
        out = self._inner.predict(*args, **kwargs)
        self.decode_seconds.append(time.perf_counter() - start)
        self.decodes += 1
        return out


def run_protocol(case: dict[str, Any], predictor: Any, spread: bool, workdir: Path, **options: Any) -> dict[str, Any]:
    """Box step + 5 click steps through the npz contract; per-step DSC/NSD, AUCs, finals, seconds."""
    from napari_medadapt.core.segfm import (
        auc,
        load_case,
        multiclass_scores,
        next_click_3d,
        predict_case,
        save_case,
    )

    gts, imgs, spacing = case["gts"], case["imgs"], np.asarray(case["spacing"], np.float64)
    classes = [int(c) for c in np.unique(gts)[1:]]
    clicks = [{"fg": [], "bg": []} for _ in classes]
    order: list[list[str | None]] = [[] for _ in classes]
    inp, out = workdir / "case.npz", workdir / "out.npz"
    save_case(inp, imgs=imgs, spacing=spacing, boxes=case["boxes"])
    dscs, nsds, seconds, per_class, decodes = [], [], [], [], []
    segs = np.zeros_like(gts)
    for step in range(6):
        if step > 0:
            for i, cls in enumerate(classes):
                click = next_click_3d(segs == cls, gts == cls)
                if click is None:
                    order[i].append(None)
                    continue
                clicks[i][click.kind].append(list(click.zyx))
                order[i].append(click.kind)
            save_case(inp, imgs=imgs, spacing=spacing, clicks=clicks, clicks_order=order, prev_pred=segs,
                      boxes=case["boxes"])
        before = predictor.decodes if isinstance(predictor, CountingPredictor) else 0
        start = time.perf_counter()
        segs = predict_case(load_case(inp), predictor, spread=spread, **options)
        save_case(out, segs=segs)
        seconds.append(time.perf_counter() - start)
        decodes.append((predictor.decodes if isinstance(predictor, CountingPredictor) else 0) - before)
        dsc, nsd = multiclass_scores(gts, segs, tuple(spacing))
        dscs.append(dsc)
        nsds.append(nsd)
        per_class.append([round(float(2 * ((segs == c) & (gts == c)).sum() / ((segs == c).sum() + (gts == c).sum())), 4)
                          for c in classes])
    return {
        "dsc": [round(v, 4) for v in dscs], "nsd": [round(v, 4) for v in nsds],
        "dsc_auc": round(auc(dscs), 4), "nsd_auc": round(auc(nsds), 4),
        "final_dsc": round(dscs[-1], 4), "final_nsd": round(nsds[-1], 4),
        "seconds": [round(s, 3) for s in seconds], "per_class_dsc": per_class,
        "s_per_interaction": round(float(np.mean(seconds)), 3),
        "s_per_click_step": round(float(np.mean(seconds[1:])), 3),
        "clicks_order": order, "decodes": decodes,
    }


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write the reports."""
    import torch

    from napari_medadapt.core.sam import EmbeddingCache, SamPredictor

    resolve_paths(args)
    torch.set_num_threads(max(1, args.threads))
    organ_ids = [int(v) for v in args.organs.split(",")] if args.organs else None
    cases = make_cases(Path(args.data), [c.strip() for c in args.cases.split(",") if c.strip()], args.dev, organ_ids)
    options: dict[str, Any] = {"box_stops": bool(args.box_stops)}
    for name in ENGINE_OVERRIDES:  # the engine settings given on the command line
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    report: dict[str, Any] = {
        "protocol": "CVPR25_iter_eval.py (JunMa11/CVPR-MedSegFMCompetition), re-implemented in core/segfm",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "device": str(args.device or "cpu")},
        "dev": bool(args.dev), "options": options,
        "cases": {name: {"shape": list(c["imgs"].shape), "spacing": list(c["spacing"]), "classes": c["classes"],
                         "boxes": c["boxes"]} for name, c in cases.items()},
        "runs": [],
    }
    started = time.perf_counter()
    # one cache for all models: LiteMedSAM and its click decoder share the encoder (the same weights hash)
    cache = EmbeddingCache(max_bytes=3 * 1024**3, disk_dir=args.cache_dir)
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        predictor = CountingPredictor(SamPredictor(model_name, cache=cache, device=args.device))
        for name, case in cases.items():
            zs = sorted({z for b in case["boxes"] for z in range(max(0, b["z_min"] - 2),
                                                                   min(case["imgs"].shape[0], b["z_max"] + 3))})
            t0 = time.perf_counter()
            predictor.precompute(case["imgs"][zs], (0.0, 255.0))
            embed_s = time.perf_counter() - t0
            print(f"{model_name} {name}: embedded {len(zs)} slices in {embed_s:.1f} s", flush=True)
            for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
                with tempfile.TemporaryDirectory(prefix="medadapt-segfm-") as tmp:
                    result = run_protocol(case, predictor, variant == "object", Path(tmp), **options)
                result.update({"model": model_name, "case": name, "variant": variant, "embed_seconds": round(embed_s, 1),
                               "embedded_slices": len(zs),
                               "median_decode_s": round(float(np.median(predictor.decode_seconds)), 4)})
                predictor.decode_seconds.clear()
                report["runs"].append(result)
                print(f"  {variant}: DSC {result['dsc']} AUC {result['dsc_auc']} s/int {result['s_per_interaction']}",
                      flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(report, Path(args.json))
    write_markdown(report, Path(args.md))
    print(f"wrote {args.json} and {args.md}")
    return 0


def _row(r: dict[str, Any]) -> str:
    steps = " / ".join(f"{v:.3f}" for v in r["dsc"])
    nsd = " / ".join(f"{v:.3f}" for v in r["nsd"])
    return (f"| {r['case']} | {r['model']} | {VARIANTS.get(r['variant'], r['variant'])} | {steps} | {nsd} | "
            f"{r['dsc_auc']:.3f} | {r['final_dsc']:.3f} | {r['final_nsd']:.3f} | {r['s_per_interaction']:.2f} | "
            f"{r['s_per_click_step']:.2f} | {np.mean(r['decodes'][1:]):.0f} | {r['median_decode_s']:.3f} | "
            f"{r['embed_seconds']:.0f} ({r['embedded_slices']}) |")


def write_markdown(report: dict[str, Any], path: Path) -> Path:
    """The Markdown report (a hand-written ``## Notes`` section already there is kept)."""
    from napari_medadapt.bench._common import write_markdown_keeping_notes

    lines = [
        "# CVPR 2025 interactive 3D protocol (`medadapt bench segfm`)" + (" - settings cases (--dev)" if report["dev"] else ""),
        "",
        f"Protocol: {report['protocol']}. Step 0 the 3D box per class, then 5 steps with one simulated click per class "
        "(largest 26-connected error component, EDT maximum, seed 42), the previous prediction passed back through the "
        "npz contract. DSC / NSD (2 mm) per step (box, click 1..5); DSC_AUC = trapezoid over the 5 click steps (max 4). "
        "Seconds per interaction: all 6 steps (load + predict + save of the case), embeddings precomputed (their time "
        f"apart). Machine: {report['machine']}. Engine options: {report['options']}. Total run {report['total_seconds']} s.",
        "",
        "| case | model | variant | DSC per step | NSD per step | DSC_AUC | final DSC | final NSD | s/interaction "
        "| s/click step | decodes/click step | median s/decode | embedding s (slices) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(r) for r in report["runs"]]
    lines += ["", "DSC per class, box step -> final:", ""]
    for r in report["runs"]:
        names = report["cases"][r["case"]]["classes"]
        per = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, r["per_class_dsc"][-1], strict=False))
        lines.append(f"- {r['case']}, {r['model']}, {r['variant']}: box {r['per_class_dsc'][0]} -> final {per}")
    lines.append("")
    return write_markdown_keeping_notes(path, "\n".join(lines))
