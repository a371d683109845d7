"""Tiny, randomly initialised ViT and BLIP models, saved as ``save_pretrained`` folders.

They have the classes of the real models (``ViTModel``, ``BlipForConditionalGeneration``) and go
through the node's own loading code, but build in well under a second and never need a network:
the processors are constructed in code and the tokenizer's vocabulary is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Side of the tiny models' input images, in pixels (4x4 patches of 16 pixels).
IMAGE_SIZE = 64

#: The tiny tokenizer's vocabulary: BERT's special tokens, BLIP's decoder start token, some words.
VOCABULARY = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]",
    "a", "an", "the", "of", "with", "chest", "x", "-", "ray", "radiograph", "lung", "lungs", "heart",
    "bone", "rib", "spine", "left", "right", "view", "frontal", "image", "black", "white", "and",
)  # fmt: skip

#: Caption words the tiny BLIP is biased towards, so that its caption is never empty.
CAPTION_WORDS = ("chest", "x", "-", "ray", "lung", "bone")


@dataclass(frozen=True)
class TinyModels:
    """Folders of the saved tiny models."""

    vit: Path
    blip: Path


def build_tiny_vit(folder: Path, *, seed: int = 0) -> Path:
    """Save a 2-layer, 32-wide ``ViTModel`` and a ``ViTImageProcessorPil`` into ``folder``."""
    import torch
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE_SIZE,
        patch_size=16,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)
    return folder


def build_tiny_blip(folder: Path, *, seed: int = 0) -> Path:
    """Save a 1-layer, 32-wide ``BlipForConditionalGeneration`` and its ``BlipProcessor``.

    The language head's bias favours :data:`CAPTION_WORDS` and rules out the end and special
    tokens, so the caption of any image is a few words (random weights would often end at once).
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    torch.manual_seed(seed)
    vocabulary = {token: index for index, token in enumerate(VOCABULARY)}
    tokenizer = BertTokenizer(vocab=vocabulary, bos_token="[DEC]")
    config = BlipConfig(
        text_config={
            "vocab_size": len(VOCABULARY),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "bos_token_id": vocabulary["[DEC]"],
            "pad_token_id": vocabulary["[PAD]"],
            "sep_token_id": vocabulary["[SEP]"],
            "eos_token_id": vocabulary["[SEP]"],
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.bias
        bias.fill_(-20.0)
        for word in CAPTION_WORDS:
            bias[vocabulary[word]] = 5.0
    model.save_pretrained(folder)
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    return folder


def build_tiny_models(folder: Path) -> TinyModels:
    """Build both tiny models under ``folder`` (subfolders ``tiny-vit`` and ``tiny-blip``)."""
    return TinyModels(vit=build_tiny_vit(folder / "tiny-vit"), blip=build_tiny_blip(folder / "tiny-blip"))
