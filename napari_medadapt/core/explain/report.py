"""Writing an explanation: JSON, one heatmap NIfTI per reported prototype, gallery thumbnails and an HTML report.

Files in the output folder (each written atomically; an input file is never replaced):
``explanation.json``, ``heatmap_prototype_<id>.nii.gz`` (activation on the source grid of the first image),
``evidence.nii.gz`` (regions), ``prototype_<id>.png`` (the stored source patch, FLAIR or the first modality,
with the prototype's class outlined and its position marked), ``heatmaps.png`` (the target plane with each
heatmap over it) and ``report.html``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import OutputError, atomic_write, check_output_path, write_text_atomic
from .bank import source_text

if TYPE_CHECKING:
    from ..volume import Geometry
    from .bank import PrototypeBank
    from .explain import Explanation

#: Outline colour of the prototype's class on a thumbnail (RGB).
OUTLINE = (255, 140, 0)


def display_channel(modalities: Sequence[str]) -> int:
    """The channel shown for a patch or source slice: FLAIR when present, else the first."""
    return list(modalities).index("flair") if "flair" in modalities else 0


def _grey(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99]) if image.any() else (0.0, 1.0)
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def thumbnail(bank: PrototypeBank, index: int, zoom: int = 3) -> np.ndarray:
    """RGB uint8 image of prototype ``index``'s source patch: grey input, its class outlined, centre marked."""
    from scipy import ndimage

    patch = bank.patches[index, display_channel(bank.card["modalities"])].astype(np.float32)
    rgb = np.repeat(_grey(patch)[..., None], 3, axis=2)
    region = bank.patch_labels[index] == bank.entry(index)["label"]
    outline = region & ~ndimage.binary_erosion(region)
    rgb[outline] = OUTLINE
    centre = patch.shape[0] // 2
    rgb[centre, max(centre - 3, 0) : centre + 4] = (0, 255, 255)
    rgb[max(centre - 3, 0) : centre + 4, centre] = (0, 255, 255)
    return np.kron(rgb, np.ones((zoom, zoom, 1), dtype=np.uint8))


def _save_png(path: Path, rgb: np.ndarray, inputs: Sequence[str]) -> Path:
    from matplotlib.image import imsave

    path = check_output_path(path, inputs=inputs, what="Report image")
    atomic_write(path, lambda tmp: imsave(tmp, rgb, format="png"), suffix=".png")
    return path


def _heatmap_figure(path: Path, plane: np.ndarray, maps: Mapping[int, np.ndarray], titles: Mapping[int, str], inputs: Sequence[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * max(len(maps), 1), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    for column, (pid, heat) in enumerate(maps.items(), start=1):
        axes = figure.add_subplot(1, max(len(maps), 1), column)
        axes.imshow(plane, cmap="gray")
        axes.imshow(np.ma.masked_less(heat, 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
        axes.set_title(titles[pid], fontsize=8)
        axes.axis("off")
    figure.tight_layout()
    path = check_output_path(path, inputs=inputs, what="Report image")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"), suffix=".png")
    return path


def write_explanation(
    out_dir: str | Path,
    explanation: Explanation,
    bank: PrototypeBank,
    heatmaps: np.ndarray,
    geometry: Geometry,
    *,
    plane_image: np.ndarray,
    plane: int,
    evidence: np.ndarray | None = None,
    inputs: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the files of one explanation into ``out_dir`` (created); returns them by kind.

    ``heatmaps`` (n, Z, Y, X) are the activation maps of ``explanation.matches`` in order (display grid);
    ``plane_image`` (Y, X) is the display plane ``plane`` the figure shows under them.
    """
    from ..volume import save_image

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out-dir {out} is a file; give a folder for the explanation.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"the folder {out} could not be created ({err.strerror or err}).") from err
    inputs = [str(i) for i in inputs]
    written: dict[str, Path] = {}
    record = explanation.as_dict()
    titles = {}
    for match, heat in zip(record["matches"], heatmaps, strict=True):
        pid = match["id"]
        heat_path = save_image(heat.astype(np.float32), geometry, out / f"heatmap_prototype_{pid}.nii.gz", inputs=inputs)
        thumb_path = _save_png(out / f"prototype_{pid}.png", thumbnail(bank, pid), inputs)
        match.update(heatmap=heat_path.name, thumbnail=thumb_path.name, description=bank.describe(pid))
        written[f"heatmap {pid}"], written[f"thumbnail {pid}"] = heat_path, thumb_path
        titles[pid] = f"#{pid} {match['class_name']} ({match['similarity']:.2f})"
    if evidence is not None:
        written["evidence"] = save_image(evidence.astype(np.float32), geometry, out / "evidence.nii.gz", inputs=inputs)
        record["evidence"] = written["evidence"].name
    maps = {m["id"]: h[plane].astype(np.float32) for m, h in zip(record["matches"], heatmaps, strict=True)}
    written["figure"] = _heatmap_figure(out / "heatmaps.png", plane_image, maps, titles, inputs)
    record.update({"figure": written["figure"].name, "plane": int(plane), **(extra or {})})
    written["json"] = write_text_atomic(out / "explanation.json", json.dumps(record, indent=1) + "\n", what="Explanation")
    written["html"] = write_text_atomic(out / "report.html", _html(record), what="Report")
    return written


def _row(match: Mapping[str, Any]) -> str:
    esc = html.escape
    share = "" if match["share"] is None else f"{match['share']:.1%}"
    source = match["source"]
    return (
        f"<tr><td><img src='{esc(match['thumbnail'])}' width='96'></td><td>#{match['id']}</td>"
        f"<td>{esc(match['class_name'])}</td><td>{match['similarity']:.3f}</td><td>{share}</td>"
        f"<td>{esc(source_text(source))}</td><td>{'forgotten' if match['forgotten'] else ''}</td></tr>"
    )


def _html(record: Mapping[str, Any]) -> str:
    esc = html.escape
    target = record["target"]
    where = f"voxel (z, y, x) {tuple(target['zyx'])}" if target["kind"] == "voxel" else f"{target['description']} ({target['voxels']} voxels)"
    rows = "".join(_row(m) for m in record["matches"])
    notes = "".join(f"<li>{esc(n)}</li>" for n in record.get("notes", []))
    inputs = ", ".join(f"{k}: {v}" for k, v in (record.get("inputs") or {}).items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>napari-medadapt explanation</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f2f2f2}</style></head><body>"
        f"<h1>Why {esc(record['predicted_class'])}?</h1>"
        f"<p>Model <b>{esc(record['model'])}</b>, prototype bank <b>{esc(record['bank'])}</b>"
        f"{' (projected prototypes: each is its source patch)' if record['projected'] else ''}. Target: {esc(where)}; "
        f"predicted <b>{esc(record['predicted_class'])}</b> (probability {record['probability']:.2f}).</p>"
        + (f"<p>Images: {esc(inputs)}.</p>" if inputs else "")
        + (f"<ul>{notes}</ul>" if notes else "")
        + "<p>Training patches from <i>synthetic phantoms</i> are simulated brain images with tumours, not patients. "
        "Thumbnails: the prototype's source patch, its class outlined in orange, its position marked by the cyan "
        "cross.</p>"
        "<table><tr><th>source patch</th><th>prototype</th><th>class</th><th>cosine similarity</th>"
        "<th>share of the predicted class's score</th><th>source</th><th></th></tr>"
        f"{rows}</table><h2>Similar training slices (pooled features)</h2><table><tr><th>case</th><th>plane</th>"
        "<th>cosine similarity</th><th>reference labels (voxels)</th></tr>"
        + "".join(
            f"<tr><td>{esc(source_text(p).rsplit(' plane ', 1)[0])}</td><td>{p['plane']}</td><td>{p['similarity']:.3f}</td>"
            f"<td>{esc(', '.join(f'{k}: {v}' for k, v in p.get('label_voxels', {}).items()) or 'none')}</td></tr>"
            for p in record.get("similar_planes", [])
        )
        + f"</table><h2>Where each prototype fires (plane {record['plane']})</h2>"
        f"<img src='{esc(record['figure'])}' style='max-width:100%'>"
        "<p>Heatmaps: activation exp(scale x (cosine - 1)), 1 where the feature equals the prototype.</p></body></html>\n"
    )
