"""Our decoder forward (re-associated attention, matrix-product upscaling) gives Segment Anything's masks: the
published ``MaskDecoder.predict_masks`` on the same modules is the reference, for the bundled small model and for
LiteMedSAM's decoders, with every prompt kind, one and many tokens (both attention paths), and in training."""

from __future__ import annotations

import pytest
import torch

from napari_medadapt.core.sam import load_sam
from napari_medadapt.core.sam.decoding import decode

MODELS = ["sam-small", "litemedsam", "litemedsam-clicks"]


@pytest.fixture(scope="module", params=MODELS)
def sam(request):
    """The model's decoder for clicks (LiteMedSAM + click decoder: the fine-tuned one; the others: their only one)."""
    try:
        model = load_sam(request.param, device="cpu")
    except Exception as error:  # noqa: BLE001 - the weights package is optional for this comparison
        pytest.skip(f"{request.param} is not available here: {error}")
    return model.click_sam if model.click_sam is not None else model.sam


def _published(sam, embedding, points, boxes, masks, multimask):
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    logits, iou = sam.mask_decoder.predict_masks(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    selected = slice(1, None) if multimask else slice(0, 1)
    return logits[:, selected], iou[:, selected]


def _prompts(sam, clicks: int, box: bool, mask: bool, generator: torch.Generator):
    size = sam.image_encoder.img_size
    low = 4 * sam.prompt_encoder.image_embedding_size[0]
    points = None
    if clicks:
        xy = torch.rand(1, clicks, 2, generator=generator) * size
        labels = (torch.arange(clicks) % 2 == 0).long()[None]
        points = (xy, labels)
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.7]]) * size if box else None
    masks = torch.randn(1, 1, low, low, generator=generator) * 4 if mask else None
    return points, boxes, masks


@pytest.mark.parametrize(
    ("clicks", "box", "mask", "multimask"),
    [(1, False, False, True), (1, False, False, False), (0, True, False, False), (3, True, True, False),
     (2, False, True, False), (14, True, True, False)],  # 14 clicks + box: more tokens than the fast path takes
)
def test_decode_gives_the_published_decoder_output(sam, clicks, box, mask, multimask) -> None:
    generator = torch.Generator().manual_seed(clicks + 10 * box + 100 * mask)
    grid = sam.prompt_encoder.image_embedding_size[0]
    embedding = torch.randn(1, sam.prompt_encoder.embed_dim, grid, grid, generator=generator) * 0.5
    points, boxes, masks = _prompts(sam, clicks, box, mask, generator)
    with torch.inference_mode():
        expected, expected_iou = _published(sam, embedding, points, boxes, masks, multimask)
        xy, labels = points if points is not None else (None, None)
        logits, iou = decode(sam, embedding, xy, labels, boxes, masks, multimask=multimask)
    assert logits.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((logits - expected).abs().max()) < 1e-4 * max(scale, 1.0)
    assert torch.allclose(iou, expected_iou, atol=1e-4)


def test_decode_trains_like_the_published_decoder(sam) -> None:
    """Gradients reach the decoder's weights the same way (training uses this path: medadapt train sam-clicks)."""
    generator = torch.Generator().manual_seed(7)
    grid = sam.prompt_encoder.image_embedding_size[0]
    embedding = torch.randn(2, sam.prompt_encoder.embed_dim, grid, grid, generator=generator) * 0.5
    xy = torch.rand(2, 2, 2, generator=generator) * sam.image_encoder.img_size
    labels = torch.tensor([[1, 0], [1, 1]])
    weight = sam.mask_decoder.transformer.layers[0].cross_attn_image_to_token.q_proj.weight
    grads = []
    for forward in ("ours", "published"):
        sam.zero_grad()
        if forward == "ours":
            logits, _ = decode(sam, embedding, xy, labels, None, None)
        else:
            logits = torch.cat([_published(sam, embedding[i : i + 1], (xy[i : i + 1], labels[i : i + 1]), None, None,
                                           False)[0] for i in range(2)])
        logits.sigmoid().mean().backward()
        grads.append(weight.grad.clone())
    sam.zero_grad()
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-7)
