"""Markdown rendering of the ``medadapt bench sam`` JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import write_markdown_keeping_notes

GOALS = {
    "click_to_mask_s_median_cached": ("click -> mask, cached embedding (median, wall)", 0.05),
    "click_to_mask_cpu_s_median": ("click -> mask, cached embedding (median, CPU time)", 0.05),
    "embed_155_slices_s": ("embedding 155 slices (wall)", 15.0),
    "embed_155_slices_cpu_s": ("embedding 155 slices (CPU time)", 15.0),
    "propagation_100_slices_s_cached": ("propagation through 100 slices (embeddings cached, wall)", 5.0),
    "propagation_100_slices_cpu_s_cached": ("propagation through 100 slices (embeddings cached, CPU time)", 5.0),
    "propagation_100_slices_s_uncached": ("propagation through 100 slices (embedding included)", 5.0),
    "vit_b_decoder_click_s_median": ("SAM ViT-B decoder, one click (random weights)", 0.15),
    "vit_b_encoder_s_per_slice": ("SAM ViT-B encoder, one 1024 px slice (random weights)", None),
}
#: LiteMedSAM's encoder paths: label and the goal (at least), in milliseconds or ratios
ENCODER_ROWS = {
    "encoder_ms_per_slice_fp32_eager": ("LiteMedSAM encoder as published (fp32 eager), ms per slice", None),
    "encoder_ms_per_slice_in_use": (
        "LiteMedSAM encoder in use (fp32: BN folded, channels-last, GELU fused, first stage in strips), ms per slice",
        None,
    ),
    "encoder_speedup_in_use_vs_fp32_eager": ("speed-up of the path in use", 2.0),
    "encoder_in_use_mask_iou_vs_fp32_eager_min": ("lowest tight-box mask IoU, path in use vs published", 0.98),
    "encoder_ms_per_slice_bf16": ("LiteMedSAM encoder, opt-in bf16 (MEDADAPT_SAM_PRECISION=bf16), ms per slice", None),
    "encoder_speedup_bf16_vs_fp32_eager": ("speed-up of the bf16 path", 2.0),
    "encoder_bf16_mask_iou_vs_fp32_eager_min": ("lowest tight-box mask IoU, bf16 vs published", 0.98),
}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the report as Markdown tables to ``path``."""
    lines = [
        "# Benchmark: Segment Anything engine (`medadapt bench sam`)",
        "",
        "Simulated user (METHODS section 5) on every slice that contains the target: first click at the",
        "target's interior point farthest from its boundary, then a click in the largest error region",
        "(positive if missed, negative if false), stop at IoU 0.90 or 20 clicks. NoC@t: mean clicks to",
        "reach IoU t (failures count as 20); NoF@t: slices that never reach t. Box: the reference",
        "mask's bounding box with 0-10 px random jitter per side. Propagation: 3D Dice from the middle",
        "slice's reference mask (box-margin in extent: only within the reference's slice range, as a user's",
        "3D box gives it). 'jittered box + clicks': the box stays, the simulated clicks are added to it. The",
        "comparison rows of a model come from one run; the models of a case ran one after the other on the same",
        "machine. Reference labels are automatic (BraTS algorithm fusion / TotalSegmentator), not expert contours.",
        "",
    ]
    for case in report.get("cases", []):
        values = case["label_values"]
        lines += [
            f"## {case['image']} (labels {values if values else 'all non-zero'})",
            "",
            f"Model `{case['model']}` (sha256 {case['model_sha256'][:12]}..."
            + (f", decoder {case['decoder_sha256'][:12]}..." if case.get("decoder_sha256") else "")
            + f"), axis {case['axis']}, window "
            f"{case['window'][0]:.0f} to {case['window'][1]:.0f}, {case['slices_with_target']} slices with the "
            f"target (classical baseline on {case['baseline_slices']}"
            + (" of them)." if case["baseline_slices"] else ": not run with this model).")
            + f" Torch threads: {case.get('torch_threads', 1)}.",
            "",
            "| method | NoC@80 | NoC@85 | NoC@90 | NoF@85 | NoF@90 | IoU@1 | IoU@3 | IoU@5 | s/click |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in case["methods"].items():
            lines.append(
                f"| {name} | {m['NoC@80']:.2f} | {m['NoC@85']:.2f} | {m['NoC@90']:.2f} | {m['NoF@85']:.0f} | "
                f"{m['NoF@90']:.0f} | {m['IoU@1']:.3f} | {m['IoU@3']:.3f} | {m['IoU@5']:.3f} | "
                f"{m['median_s_per_click']:.3f} |"
            )
        lines += [
            "",
            f"Box prompt (0-10 px jitter): mean IoU {case['box_iou_mean']:.3f}, median {case['box_iou_median']:.3f}."
            + (
                f" Tight box: mean IoU {case['tight_box_iou_mean']:.3f}, median {case['tight_box_iou_median']:.3f}."
                if "tight_box_iou_mean" in case
                else ""
            ),
            "",
            "| propagation mode | 3D Dice | slices filled | stopped (down / up) |",
            "|---|---|---|---|",
        ]
        prop = case["propagation"]
        for mode in ("mask", "box", "points", "box-margin", "box-margin in extent"):
            if mode in prop:
                p = prop[mode]
                lines.append(
                    f"| {mode} | {p['dice_3d']:.3f} | {p['slices_filled']} / {prop['target_slices']} | "
                    f"{p['stopped'].get('down', '')} / {p['stopped'].get('up', '')} |"
                )
        threads = case.get("torch_threads", 1)
        timing = case["timing"]
        timed = (
            f" Propagation times are scaled to 100 slices from the {timing['propagation_timed_mode']}-mode run "
            f"({timing['propagation_timed_slices']} slices, the longest run)."
            if "propagation_timed_mode" in timing
            else ""
        )
        lines += [
            "",
            f"Timings use {threads} torch thread(s). Wall time includes waiting for the CPU when the machine is",
            "shared; CPU time (all threads of the process) is what the computation itself needs on this CPU."
            + timed,
            "",
            f"| timing ({threads} torch thread(s)) | seconds | goal | met |",
            "|---|---|---|---|",
        ]
        for key, (label, goal) in GOALS.items():
            if key in case["timing"]:
                value = case["timing"][key]
                met = "" if goal is None else ("yes" if value <= goal else "**no**")
                lines.append(f"| {label} | {value:.3f} | {'' if goal is None else f'<= {goal:g}'} | {met} |")
        for key, (label, goal) in ENCODER_ROWS.items():
            if key in case["timing"]:
                met = "" if goal is None else ("yes" if case["timing"][key] >= goal else "**no**")
                lines.append(f"| {label} | {case['timing'][key]:.3f} | {'' if goal is None else f'>= {goal:g}'} | {met} |")
        lines.append("")
    env = report.get("environment", {})
    if env:
        lines += [
            "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
            "",
            "Reproduce: `medadapt bench sam --image IMAGE --label LABEL --label-values ... [--append]`",
            "(see docs/models/sam_small.md for the exact commands used here).",
            "",
        ]
    write_markdown_keeping_notes(path, "\n".join(lines))
