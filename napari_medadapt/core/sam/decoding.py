"""Batched prompt -> mask decoding with Segment Anything's prompt encoder and mask decoder.

``MaskDecoder.forward`` repeats one image embedding for every prompt of that image. Training and
batched inference need one prompt set per image instead, so :func:`decode` runs the same modules
(``PromptEncoder``, the decoder's ``TwoWayTransformer``, upscaling and hypernetwork heads) with
one embedding per prompt set. The maths is identical to ``MaskDecoder.predict_masks``.
"""

from __future__ import annotations

from typing import Any


def decode(
    sam: Any,
    embeddings: Any,
    points_xy: Any | None = None,
    point_labels: Any | None = None,
    boxes_xyxy: Any | None = None,
    mask_inputs: Any | None = None,
    multimask: bool = False,
    residual: Any | None = None,
) -> tuple[Any, Any]:
    """Decode one prompt set per image embedding.

    Parameters
    ----------
    sam
        A ``segment_anything.modeling.Sam`` (or the bundled small model, same modules).
    embeddings
        ``(B, C, g, g)`` image embeddings.
    points_xy, point_labels
        ``(B, N, 2)`` model-input pixel coordinates ``(x, y)`` and ``(B, N)`` labels
        (1 positive, 0 negative, -1 padding), or ``None``.
    boxes_xyxy
        ``(B, 4)`` boxes in model-input pixels, or ``None``.
    mask_inputs
        ``(B, 1, 4g, 4g)`` low-resolution mask logits from a previous prediction, or ``None``.
    multimask
        Return the 3 ambiguity-aware masks (``True``) or the single-mask output (``False``).
    residual
        ``(B, 1, 4g, 4g)`` logits added to every output mask (dense-prompt models: the decoder
        learns a correction of the prompt map, see :func:`dense_prior`), or ``None``.

    Returns
    -------
    low_res_logits, iou_predictions
        ``(B, K, 4g, 4g)`` mask logits and ``(B, K)`` predicted IoU (K = 3 or 1).
    """
    import torch

    pe = sam.prompt_encoder
    dec = sam.mask_decoder
    points = None if points_xy is None else (points_xy, point_labels)
    sparse, dense = pe(points=points, boxes=boxes_xyxy, masks=mask_inputs)
    batch = embeddings.shape[0]
    if sparse.shape[0] != batch:
        sparse = sparse.expand(batch, -1, -1)
    if dense.shape[0] != batch:
        dense = dense.expand(batch, -1, -1, -1)
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
    src = embeddings + dense
    pos = pe.get_dense_pe().expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src, pos, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :]
    upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    iou_pred = dec.iou_prediction_head(iou_token_out)
    if residual is not None:
        masks = masks + residual
    selected = slice(1, None) if multimask else slice(0, 1)
    return masks[:, selected], iou_pred[:, selected]


def dense_prior(
    batch: int,
    image_size: int,
    low_size: int,
    points_xy: Any | None = None,
    point_labels: Any | None = None,
    boxes_xyxy: Any | None = None,
    previous: Any | None = None,
    click_radius: float = 6.0,
) -> Any:
    """Dense prompt map for models trained with ``dense_prompts`` (the bundled small model).

    SAM learns to turn sparse prompt tokens into a location only after very long training. The
    small model additionally receives its prompts as a low-resolution logit map through SAM's mask
    prompt input: the previous mask logits (or +4 inside the box and -4 outside, or 0), with disks of
    +8 / -8 around positive / negative clicks. Coordinates are model-input pixels ``(x, y)``.

    Returns
    -------
    ``(B, 1, low_size, low_size)`` float tensor.
    """
    import torch

    scale = low_size / image_size
    if previous is not None:
        prior = previous.clamp(-8.0, 8.0).clone()
    else:
        prior = torch.zeros(batch, 1, low_size, low_size)
        if boxes_xyxy is not None:
            ys = (torch.arange(low_size) + 0.5) / scale
            xs = ys
            for j in range(batch):
                x0, y0, x1, y1 = (float(v) for v in boxes_xyxy[j])
                inside_y = (ys >= y0) & (ys <= y1 + 1)
                inside_x = (xs >= x0) & (xs <= x1 + 1)
                prior[j, 0] = torch.where(inside_y[:, None] & inside_x[None, :], 4.0, -4.0)
    if points_xy is not None:
        grid = (torch.arange(low_size, dtype=torch.float32) + 0.5) / scale
        for j in range(batch):
            for (x, y), lab in zip(points_xy[j].tolist(), point_labels[j].tolist(), strict=True):
                if lab < 0:
                    continue
                near = ((grid[:, None] - y) ** 2 + (grid[None, :] - x) ** 2) <= click_radius**2
                prior[j, 0][near] = 8.0 if lab == 1 else -8.0
    return prior
