"""ViT and BLIP loaded offline from local folders: loading, features, rollout, caption, pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from miemss_node.config import ModelSettings
from miemss_node.errors import ModelError
from miemss_node.pipeline.base import DecodedImage, PatchFeatures, PipelineSettings
from miemss_node.pipeline.caption import caption_key_image, study_caption
from miemss_node.pipeline.models import NO_MODELS, ModelSet, load_models, model_revision, resolve_device
from miemss_node.pipeline.runner import analyse_frames, analyse_image
from miemss_node.pipeline.vit import FEATURE_NAMES, VitAttention, VitPatches, attention_rollout, join_vit_features
from tests.support.paths import REPO_ROOT
from tests.support.tiny_models import TinyModels, build_tiny_models, build_tiny_vit

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models(tiny: TinyModels) -> ModelSet:
    """As a worker loads them with the default settings: ViT in int8, BLIP in fp32."""
    return load_models(ModelSettings(vit=str(tiny.vit), blip=str(tiny.blip), device="cpu"))


def chest_like(shape: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A smooth image with a bright blob, float32 in [0, 1]."""
    rows, cols = np.mgrid[: shape[0], : shape[1]] / np.array(shape).reshape(2, 1, 1)
    blob = ((rows - 0.3) ** 2 + (cols - 0.7) ** 2) < 0.02
    return (0.2 + 0.5 * rows + 0.3 * blob).astype(np.float32)


def test_no_folder_means_no_models_and_no_torch() -> None:
    assert load_models(ModelSettings()) is NO_MODELS
    assert NO_MODELS.runs == ()
    # The receiver, the worker and check-config must start without importing torch/transformers.
    code = (
        "import sys, miemss_node.cli, miemss_node.node, miemss_node.worker, miemss_node.process;"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); print(heavy); sys.exit(bool(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_models_are_named_with_their_weights_hash_and_parameters(tiny: TinyModels, models: ModelSet) -> None:
    vit, blip = models.runs
    assert (vit.role, vit.name, blip.role, blip.name) == ("vit", "tiny-vit", "blip", "tiny-blip")
    assert vit.revision == model_revision(tiny.vit) and vit.revision.startswith("sha256 ")
    assert len(vit.revision.split()[-1]) == 12 and vit.revision != blip.revision
    assert "int8" in vit.parameters and "attention rollout" in vit.parameters
    assert "greedy, max 30 new tokens, fp32 on cpu" in blip.parameters
    assert blip.describe() == f"blip tiny-blip ({blip.revision}; {blip.parameters})"


def test_fetched_folder_names_its_hub_repository_and_commit(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "vit")
    (folder / "miemss_model.json").write_text(json.dumps({"repo_id": "owner/vit", "revision": "a" * 40}))
    loaded = load_models(ModelSettings(vit=str(folder), device="cpu", int8=()))
    assert loaded.vit is not None
    assert loaded.vit.run.name == "owner/vit"
    assert loaded.vit.run.revision.startswith("commit aaaaaaaaaaaa, sha256 ")
    assert "fp32" in loaded.vit.run.parameters


def test_int8_quantises_the_linear_layers_on_the_cpu(models: ModelSet) -> None:
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    assert models.vit is not None and models.blip is not None
    vit_modules = list(models.vit.model.modules())
    assert any(isinstance(m, Int8Linear) for m in vit_modules)
    assert not any(type(m) is torch.nn.Linear for m in vit_modules)
    assert not any(isinstance(m, Int8Linear) for m in models.blip.model.modules())


def test_vit_patches_are_batched_and_match_one_by_one(tiny: TinyModels) -> None:
    # fp32: dynamic int8 scales activations per batch, so there a frame's result depends on its batch.
    vit = load_models(ModelSettings(vit=str(tiny.vit), device="cpu", int8=())).vit
    assert vit is not None
    first, second = chest_like(), chest_like((60, 120))[::-1].copy()
    batch = vit.patches([first, second])
    alone = vit.patches([second])[0]
    assert [p.embeddings.shape for p in batch] == [(4, 4, 32), (4, 4, 32)]
    np.testing.assert_allclose(batch[1].embeddings, alone.embeddings, atol=1e-4)
    np.testing.assert_allclose(batch[1].rollout, alone.rollout, atol=1e-5)
    assert all(p.rollout.max() == pytest.approx(1.0) and p.rollout.min() == pytest.approx(0.0) for p in batch)


def test_attention_rollout_follows_the_class_token() -> None:
    import torch

    tokens = 5  # class token + 4 patches
    uniform = torch.full((1, 2, tokens, tokens), 1.0 / tokens)
    rollout = attention_rollout([uniform, uniform])
    torch.testing.assert_close(rollout, torch.ones(1, tokens - 1))
    focused = uniform.clone()
    focused[0, :, 0, :] = 0.0
    focused[0, :, 0, 3] = 1.0  # the class token attends to patch 3 (index 2 of the patches)
    rollout = attention_rollout([uniform, focused])
    assert int(rollout.argmax()) == 2 and float(rollout.max()) == 1.0 and float(rollout.min()) == 0.0


def test_vit_columns_join_the_hog_features() -> None:
    hog = PatchFeatures(
        vectors=np.zeros((8 * 6, 5), dtype=np.float32), grid_shape=(8, 6), patch_size_px=(4.0, 4.0), extractors=("hog",)
    )
    rng = np.random.default_rng(0)
    embeddings = np.ones((4, 4, 16), dtype=np.float32) + 0.01 * rng.standard_normal((4, 4, 16)).astype(np.float32)
    embeddings[1, 2] = -1.0  # an odd token: the patches under it are the most novel
    joined = join_vit_features(hog, VitPatches(embeddings=embeddings, rollout=np.ones((4, 4), dtype=np.float32)))
    assert joined.vectors.shape == (48, 5 + len(FEATURE_NAMES))
    assert joined.extractors == ("hog", "vit")
    novelty = joined.vectors[:, 5].reshape(8, 6)
    # Feature rows 2-3 and column 3 have their centres over token (1, 2).
    assert novelty[2:4, 3].min() > np.delete(novelty.ravel(), [2 * 6 + 3, 3 * 6 + 3]).max()


def test_caption_is_what_a_plain_transformers_call_gives(tiny: TinyModels, models: ModelSet) -> None:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    assert models.blip is not None
    image = chest_like()
    model = BlipForConditionalGeneration.from_pretrained(tiny.blip, local_files_only=True)
    processor = BlipProcessor.from_pretrained(tiny.blip, local_files_only=True)
    rgb = np.repeat(np.rint(image * 255).astype(np.uint8)[..., None], 3, axis=-1)
    with torch.no_grad():
        ids = model.generate(**processor(images=rgb, return_tensors="pt"), max_new_tokens=30)
    expected = processor.decode(ids[0], skip_special_tokens=True)
    caption = models.blip.caption(image)
    assert caption == " ".join(expected.split())
    assert caption.split()[0] in ("chest", "x", "-", "ray", "lung", "bone")


def test_pipeline_with_models_adds_vit_features_attention_and_caption(models: ModelSet) -> None:
    image = DecodedImage(pixels=chest_like((128, 112)), pixel_spacing_mm=(0.5, 0.5))
    settings = PipelineSettings(analysis_max_side=128, patch_size=8)
    with_models = analyse_image(image, settings, models)
    plain = analyse_image(image, settings)
    assert with_models.features.extractors == ("hog", "vit")
    assert with_models.features.vectors.shape[1] == plain.features.vectors.shape[1] + len(FEATURE_NAMES)
    assert with_models.attention is not None and with_models.attention.heatmap.shape == (128, 112)
    assert with_models.attention.grid_shape == (4, 4)
    assert with_models.caption
    assert {"vit", "caption"} <= set(with_models.stage_seconds)
    assert plain.attention is None and plain.caption is None and plain.features.extractors == ("hog",)
    without_caption = analyse_image(image, settings, models, caption=False)
    assert without_caption.caption is None and without_caption.attention is not None


def test_a_folder_that_is_not_a_model_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelError, match=r"could not be loaded as ViTModel offline.*save_pretrained"):
        load_models(ModelSettings(vit=str(tmp_path), device="cpu"))


def test_missing_weights_are_an_error_not_a_random_init(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "vit")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ModelError, match=r"lacks \d+ weight\(s\) of ViTModel"):
        load_models(ModelSettings(vit=str(folder), device="cpu"))


def test_cuda_without_a_gpu_says_what_to_set() -> None:
    import torch

    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
        return
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ModelError, match="sees no GPU.*device = 'auto' or 'cpu'"):
        resolve_device("cuda")


def test_beam_search_settings_reach_the_captioner(tiny: TinyModels) -> None:
    loaded = load_models(
        replace(ModelSettings(blip=str(tiny.blip), device="cpu"), caption_beams=2, caption_max_tokens=5)
    )
    assert loaded.blip is not None
    assert "beam search (2 beams), max 5 new tokens" in loaded.blip.run.parameters
    assert 1 <= len(loaded.blip.caption(chest_like()).split()) <= 5


class _CountingVit:
    """The loaded ViT, counting how many frames each call gets."""

    def __init__(self, vit: VitAttention) -> None:
        self.vit = vit
        self.run = vit.run
        self.batches: list[int] = []

    def patches(self, frames: Sequence[np.ndarray]) -> list[VitPatches]:
        self.batches.append(len(frames))
        return self.vit.patches(frames)


@pytest.mark.parametrize("int8", [False, True])
def test_the_vit_sees_the_frames_of_an_image_in_one_call(tiny: TinyModels, int8: bool) -> None:
    """In fp32 as one batch; in dynamic int8 one by one, since its activation scale is taken over the
    batch: a frame's attention is then exactly what it is alone."""
    models = load_models(ModelSettings(vit=str(tiny.vit), device="cpu", int8=("vit",) if int8 else ()))
    frames = [
        DecodedImage(pixels=chest_like((128, 112)), pixel_spacing_mm=(0.5, 0.5), frame_number=1),
        DecodedImage(pixels=chest_like((128, 112))[::-1].copy(), pixel_spacing_mm=(0.5, 0.5), frame_number=2),
    ]
    settings = PipelineSettings(analysis_max_side=128, patch_size=8)
    assert models.vit is not None
    counting = _CountingVit(models.vit)
    batched = analyse_frames(frames, settings, replace(models, vit=counting))  # type: ignore[arg-type]
    assert counting.batches == [2]
    assert models.vit.batch_frames is not int8
    for frame, analysis in zip(frames, batched, strict=True):
        alone = analyse_image(frame, settings, models)
        assert analysis.attention is not None and alone.attention is not None
        if int8:
            np.testing.assert_array_equal(analysis.attention.heatmap, alone.attention.heatmap)
        else:
            np.testing.assert_allclose(analysis.attention.heatmap, alone.attention.heatmap, atol=1e-5)
        assert "vit" in analysis.stage_seconds


def test_a_study_is_captioned_once_on_its_key_image(models: ModelSet) -> None:
    settings = PipelineSettings(analysis_max_side=128, patch_size=8)
    images = [DecodedImage(pixels=chest_like((128, 112)), pixel_spacing_mm=(0.5, 0.5)) for _ in range(3)]
    analyses = [analyse_image(image, settings, replace(models, blip=None)) for image in images]
    assert models.blip is not None
    captioned = caption_key_image(analyses, 1, models.blip)
    assert [a.caption is not None for a in captioned] == [False, True, False]
    assert captioned[1].caption == models.blip.caption(analyses[1].enhanced.pixels)
    assert "caption" in captioned[1].stage_seconds
    text = study_caption(captioned)
    assert text is not None and text.startswith(f"Image 2: {captioned[1].caption}") and text.count("Image") == 1
    assert caption_key_image(analyses, 1, None) == analyses
