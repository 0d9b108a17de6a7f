"""Batched prompt -> mask decoding with Segment Anything's prompt encoder and mask decoder.

``MaskDecoder.forward`` repeats one image embedding for every prompt of that image. Training and
batched inference need one prompt set per image instead, so :func:`decode` runs the same modules
(``PromptEncoder``, the decoder's ``TwoWayTransformer``, upscaling and hypernetwork heads) with
one embedding per prompt set. The maths is identical to ``MaskDecoder.predict_masks``; the transformer's
forward is :func:`two_way_transformer` (the same maths with fused attention and the image keys' positional
sum computed once per layer: about 1.6x faster on a CPU, where a click's mask must come back within 50 ms).
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
    side = src.shape[-2:]
    hs, keys = two_way_transformer(dec.transformer, src, pos, tokens)
    selected = slice(1, None) if multimask else slice(0, 1)
    mask_tokens_out = hs[:, 1 : 1 + dec.num_mask_tokens, :][:, selected]
    hypernetworks = list(dec.output_hypernetworks_mlps)[selected]
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(hypernetworks)], dim=1)
    masks = _upscaled_masks(dec.output_upscaling, keys, side, hyper_in)
    iou_pred = dec.iou_prediction_head(hs[:, 0, :])[:, selected]
    if residual is not None:
        masks = masks + residual
    return masks, iou_pred


def _upscaled_masks(upscaling: Any, keys: Any, side: tuple[int, int], hyper_in: Any) -> Any:
    """The decoder's ``output_upscaling`` (two 2 x 2 stride-2 transposed convolutions with a channel LayerNorm and
    GELUs) and the hypernetwork product, from the ``(B, HW, C)`` image tokens to ``(B, K, 4h, 4w)`` mask logits.

    A 2 x 2 stride-2 transposed convolution writes each input pixel's 2 x 2 output block as one matrix product,
    so both run as matrix products on channels-last tokens (about 4x faster on a CPU than the convolution
    modules on the transformer's transposed output); same weights, same maths.
    """
    import torch.nn.functional as F

    first, norm, _, second, _ = upscaling
    b, (h, w) = keys.shape[0], side
    c1, c2 = first.weight.shape[1], second.weight.shape[1]
    x = keys @ first.weight.permute(0, 2, 3, 1).flatten(1)  # (B, hw, 2 * 2 * c1), kernel rows then columns
    x = F.gelu(F.layer_norm(x.view(b, h, w, 2, 2, c1) + first.bias, (c1,), norm.weight, norm.bias, norm.eps))
    x = x.transpose(2, 3).reshape(b, 2 * h * 2 * w, c1)  # pixels of the 2h x 2w map, row-major
    x = F.gelu(x @ second.weight.permute(0, 2, 3, 1).flatten(1) + second.bias.repeat(4))
    x = x.view(b, 2 * h, 2 * w, 2, 2, c2).transpose(2, 3).reshape(b, 4 * h * 4 * w, c2)
    return (x @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, 4 * h, 4 * w)


def _attention(attn: Any, q: Any, k: Any, v: Any) -> Any:
    """Segment Anything's ``Attention.forward`` (projections, heads, scaled softmax) with PyTorch's fused kernel."""
    import torch.nn.functional as F

    heads = attn.num_heads
    q = attn.q_proj(q).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = attn.k_proj(k).unflatten(-1, (heads, -1)).transpose(1, 2)
    v = attn.v_proj(v).unflatten(-1, (heads, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


def _few_tokens(attn: Any, tokens: Any) -> bool:
    """Whether heads x prompt tokens is below the attention's width: then the image tokens are never projected."""
    return attn.num_heads * tokens.shape[1] < attn.internal_dim


def _image_to_tokens(attn: Any, image: Any, tokens: Any, values: Any) -> Any:
    """``attn(q=image, k=tokens, v=values)`` for thousands of image tokens attending to a few prompt tokens.

    Scores are ``image @ (Wq_h^T K_h^T) + bq_h K_h^T`` and the output ``sum_h A_h (V_h Wo_h^T) + bo``: the image
    tokens meet two matrices of width heads x tokens instead of two projections of the attention's width.
    """
    import torch

    if not _few_tokens(attn, tokens):
        return _attention(attn, image, tokens, values)
    heads, n = attn.num_heads, tokens.shape[1]
    head_dim = attn.internal_dim // heads
    k = attn.k_proj(tokens).unflatten(-1, (heads, head_dim))  # (B, n, H, d)
    v = attn.v_proj(values).unflatten(-1, (heads, head_dim))
    wq = attn.q_proj.weight.view(heads, head_dim, -1)  # (H, d, C)
    query_keys = torch.einsum("hdc,bnhd->bhnc", wq, k).flatten(1, 2)  # (B, H n, C)
    bias_keys = torch.einsum("hd,bnhd->bhn", attn.q_proj.bias.view(heads, head_dim), k).flatten(1)
    # (B, H n, L): the softmax over a head's n tokens then runs along rows of L contiguous values
    scores = torch.baddbmm(bias_keys[..., None], query_keys, image.transpose(1, 2)) * head_dim**-0.5
    weights = scores.unflatten(1, (heads, n)).softmax(2).flatten(1, 2)
    wo = attn.out_proj.weight.view(-1, heads, head_dim)  # (C, H, d)
    values_out = torch.einsum("bnhd,chd->bhnc", v, wo).flatten(1, 2)  # (B, H n, C)
    return torch.baddbmm(attn.out_proj.bias, weights.transpose(1, 2), values_out)


def _tokens_to_image(attn: Any, tokens: Any, image_keys: Any, image_values: Any) -> Any:
    """``attn(q=tokens, k=image_keys, v=image_values)`` for a few prompt tokens attending to the image tokens.

    Scores are ``(Q_h Wk_h) image_keys^T`` (the key bias adds a constant per query, which the softmax removes) and
    the output ``(A_h image_values) Wv_h^T + bv_h`` (attention rows sum to 1): the image tokens are never projected.
    """
    import torch

    if not _few_tokens(attn, tokens):
        return _attention(attn, tokens, image_keys, image_values)
    heads, n = attn.num_heads, tokens.shape[1]
    head_dim = attn.internal_dim // heads
    q = attn.q_proj(tokens).unflatten(-1, (heads, head_dim))  # (B, n, H, d)
    wk = attn.k_proj.weight.view(heads, head_dim, -1)  # (H, d, C)
    wv = attn.v_proj.weight.view(heads, head_dim, -1)
    queries = torch.einsum("bnhd,hdc->bhnc", q, wk).flatten(1, 2)  # (B, H n, C)
    weights = (queries @ image_keys.transpose(1, 2) * head_dim**-0.5).softmax(-1)  # (B, H n, L)
    pooled = (weights @ image_values).unflatten(1, (heads, n))  # (B, H, n, C)
    out = torch.einsum("bhnc,hdc->bnhd", pooled, wv) + attn.v_proj.bias.view(heads, head_dim)
    return attn.out_proj(out.flatten(2))


def two_way_transformer(transformer: Any, image_embedding: Any, image_pe: Any, point_embedding: Any) -> tuple[Any, Any]:
    """``TwoWayTransformer.forward`` of Segment Anything: same modules, same maths, fewer passes over the image.

    Each layer adds the positional encoding to the image tokens once (the published forward adds it twice, to
    the same tensor), and the attentions between the few prompt tokens and the thousands of image tokens are
    re-associated so the image tokens are never projected (:func:`_image_to_tokens`, :func:`_tokens_to_image`).
    Outputs agree with the published forward to float rounding (tests/test_sam_decoding.py).

    Returns
    -------
    queries, keys
        ``(B, N, C)`` processed prompt tokens and ``(B, HW, C)`` processed image tokens.
    """
    keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # element-wise sums on (B, HW, C) rows
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    queries = point_embedding
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attention(layer.self_attn, queries, queries, queries)
        else:
            q = queries + point_embedding
            queries = queries + _attention(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        k = keys + key_pe
        attn = _tokens_to_image(layer.cross_attn_token_to_image, queries + point_embedding, k, keys)
        queries = layer.norm2(queries + attn)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + _image_to_tokens(layer.cross_attn_image_to_token, k, queries + point_embedding, queries))
    attn = _tokens_to_image(transformer.final_attn_token_to_image, queries + point_embedding, keys + key_pe, keys)
    return transformer.norm_final_attn(queries + attn), keys


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
