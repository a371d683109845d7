"""Model benchmark: the node's ViT and BLIP steps against plain Transformers fp32 calls.

Full-size models (ViT-base and BLIP-base default configs) with random weights (the cost is the
same as with trained ones) are saved to a temporary folder and loaded twice in this process: by a
plain ``from_pretrained``, and by the node's own loader (:mod:`miemss_node.pipeline.models`), in
fp32 and in dynamic int8. Runs alternate between them so that load from other processes affects
each alike; the table gives medians.

* ViT: one 224x224 image, with attentions. Plain: ``processor(...)`` + ``model(...,
  output_attentions=True)``. Node: :meth:`VitAttention.patches` (preprocessing, forward pass,
  rollout, arrays).
* BLIP: one 384x384 image, 30 forced new tokens, greedy. Plain: ``processor(...)`` +
  ``model.generate(...)`` + decode. Node: :meth:`BlipCaptioner.caption`.
* Captions of the test images (real radiographs, decoded and enhanced as the pipeline does, with the
  node's own generation settings) by plain fp32 and by the node in int8: same or not.
* Peak memory: the peak resident set (VmHWM) of a fresh process that loads one variant and runs its
  step (safetensors are memory-mapped, so resident size in the shared process says little).

Run ``.venv/bin/python benchmarks/models.py`` (a few minutes on two cores); ``--vit DIR --blip DIR``
benchmarks real weights instead of random ones (e.g. folders from ``miemss-node models fetch``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from miemss_node.pipeline.models import load_blip, load_vit  # noqa: E402

#: Test images for the caption check: (path relative to the repository, or a pydicom-data name).
CAPTION_IMAGES = (
    "pydicom-data:RG1_J2KI.dcm",
    "../shared/data/images/nih_00000001_000_cardiomegaly_1024.png",
    "../shared/data/images/nih_00000002_000_nofinding_1024.png",
    "../shared/data/dicom/xray/dx_mono2_16bit_j2kr_1416x1420.dcm",
)


def build_random_models(folder: Path) -> tuple[Path, Path]:
    """Save ViT-base and BLIP-base default configs with random weights, and their processors."""
    import torch

    from miemss_node.pipeline.xrv import import_torchvision

    import_torchvision()  # before transformers (see miemss_node/pipeline/xrv.py)
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    torch.manual_seed(0)
    vit_dir, blip_dir = folder / "vit-base-random", folder / "blip-base-random"
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(vit_dir)
    ViTImageProcessorPil().save_pretrained(vit_dir)
    config = BlipConfig()
    # bert-base-uncased's vocabulary cannot be downloaded here: same size, made-up words.
    size = config.text_config.vocab_size
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + [f"w{i}" for i in range(size - len(specials) - 1)] + ["[DEC]"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")
    config.text_config.bos_token_id = size - 1
    config.text_config.sep_token_id = 3
    config.text_config.eos_token_id = 3
    config.text_config.pad_token_id = 0
    BlipForConditionalGeneration(config).save_pretrained(blip_dir)
    BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tokenizer).save_pretrained(blip_dir)
    return vit_dir, blip_dir


def rss_mb(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status, in MB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def timed(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """(minimum, median) wall seconds and minimum CPU seconds of each run, alternating the runs.

    Each run is warmed up once. The minimum is the run least disturbed by other processes; on a
    shared machine it, and the CPU time (all threads of this process), estimate the cost better
    than the median, which shows the spread.
    """
    for run in runs.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {name: (min(wall[name]), statistics.median(wall[name]), min(cpu[name])) for name in runs}


def peak_in_fresh_process(kind: str, variant: str, folder: Path, tokens: int, threads: int) -> float:
    """Peak RSS (MB) of a new process that loads one model variant and runs its step twice."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return float(pool.submit(_peak_child, kind, variant, str(folder), tokens, threads).result())


def _peak_child(kind: str, variant: str, folder: str, tokens: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    if variant == "imports only":
        import transformers  # noqa: F401

        return rss_mb("VmHWM")
    side = 224 if kind == "vit" else 384
    image = np.random.default_rng(0).random((side, side), dtype=np.float32)
    rgb = np.repeat(np.rint(image * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if variant == "plain fp32":
        plain = load_plain(Path(folder), None) if kind == "vit" else load_plain(None, Path(folder))
        for _ in range(2):
            with torch.inference_mode():
                if kind == "vit":
                    plain["vit"](**plain["vit_processor"](images=rgb, return_tensors="pt"), output_attentions=True)
                else:
                    inputs = plain["blip_processor"](images=rgb, return_tensors="pt")
                    plain["blip"].generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=1)
    elif kind == "vit":
        node_vit = load_vit(Path(folder), device="cpu", int8=variant == "node int8")
        for _ in range(2):
            node_vit.patches([image])
    else:
        node_blip = load_blip(Path(folder), device="cpu", int8=variant == "node int8", max_new_tokens=tokens, num_beams=1)
        for _ in range(2):
            node_blip.caption(image, min_new_tokens=tokens)
    return rss_mb("VmHWM")


def load_plain(vit_dir: Path | None, blip_dir: Path | None) -> dict[str, Any]:
    """The plain Transformers way: ``from_pretrained`` of the model and its processor, fp32."""
    from miemss_node.pipeline.xrv import import_torchvision

    import_torchvision()
    from transformers import AutoImageProcessor, BlipForConditionalGeneration, BlipProcessor, ViTModel

    loaded: dict[str, Any] = {}
    if vit_dir is not None:
        loaded["vit"] = ViTModel.from_pretrained(vit_dir, add_pooling_layer=False, attn_implementation="eager").eval()
        loaded["vit_processor"] = AutoImageProcessor.from_pretrained(vit_dir)
    if blip_dir is not None:
        loaded["blip"] = BlipForConditionalGeneration.from_pretrained(blip_dir).eval()
        loaded["blip_processor"] = BlipProcessor.from_pretrained(blip_dir)
    return loaded


def caption_images(max_side: int = 1024) -> list[tuple[str, np.ndarray]]:
    """The test images, decoded and enhanced as the pipeline does (skips the absent ones)."""
    from miemss_node.pipeline.decode import decode_dataset, decode_image_file, read_dicom_file
    from miemss_node.pipeline.enhance import enhance

    images = []
    for name in CAPTION_IMAGES:
        if name.startswith("pydicom-data:"):
            from pydicom.data import get_testdata_file

            found = get_testdata_file(name.split(":", 1)[1])
            path = Path(str(found)) if found else None
        else:
            path = (REPO / name).resolve()
        if path is None or not path.exists():
            print(f"(caption image {name} not found; skipped)")
            continue
        frame = decode_image_file(path) if path.suffix == ".png" else decode_dataset(read_dicom_file(path))[0]
        images.append((path.name, enhance(frame, "wavelet").pixels))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (default 5)")
    parser.add_argument("--tokens", type=int, default=30, help="forced new tokens of the timed captions")
    parser.add_argument("--vit", type=Path, help="a ViT folder instead of random ViT-base weights")
    parser.add_argument("--blip", type=Path, help="a BLIP folder instead of random BLIP-base weights")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        vit_dir, blip_dir = (args.vit, args.blip) if args.vit and args.blip else build_random_models(Path(tmp))
        print(f"models ready in {time.perf_counter() - started:.1f} s: {vit_dir.name}, {blip_dir.name}")
        plain = load_plain(vit_dir, blip_dir)
        node_vit32 = load_vit(vit_dir, device="cpu", int8=False)
        node_blip32 = load_blip(blip_dir, device="cpu", int8=False, max_new_tokens=args.tokens, num_beams=1)
        node_vit8 = load_vit(vit_dir, device="cpu", int8=True)
        node_blip8 = load_blip(blip_dir, device="cpu", int8=True, max_new_tokens=args.tokens, num_beams=1)

        vit_image = rng.random((224, 224), dtype=np.float32)
        vit_rgb = np.repeat(np.rint(vit_image * 255).astype(np.uint8)[..., None], 3, axis=-1)
        blip_image = rng.random((384, 384), dtype=np.float32)
        blip_rgb = np.repeat(np.rint(blip_image * 255).astype(np.uint8)[..., None], 3, axis=-1)

        def plain_vit() -> Any:
            with torch.inference_mode():
                inputs = plain["vit_processor"](images=vit_rgb, return_tensors="pt")
                return plain["vit"](**inputs, output_attentions=True)

        def plain_blip() -> str:
            with torch.inference_mode():
                inputs = plain["blip_processor"](images=blip_rgb, return_tensors="pt")
                ids = plain["blip"].generate(
                    **inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, num_beams=1, do_sample=False
                )
            return str(plain["blip_processor"].decode(ids[0], skip_special_tokens=True))

        vit_s = timed(
            {
                "plain fp32": plain_vit,
                "node fp32": lambda: node_vit32.patches([vit_image]),
                "node int8": lambda: node_vit8.patches([vit_image]),
            },
            args.repeats,
        )
        blip_s = timed(
            {
                "plain fp32": plain_blip,
                "node fp32": lambda: node_blip32.caption(blip_image, min_new_tokens=args.tokens),
                "node int8": lambda: node_blip8.caption(blip_image, min_new_tokens=args.tokens),
            },
            args.repeats,
        )
        peaks = {
            (kind, variant): peak_in_fresh_process(kind, variant, folder, args.tokens, args.threads)
            for kind, folder in (("vit", vit_dir), ("blip", blip_dir))
            for variant in ("imports only", "plain fp32", "node fp32", "node int8")
        }

        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"\n{args.threads} threads, torch {torch.__version__}, {args.repeats} alternating runs each, "
              f"load average {load}; peak RSS: a fresh process loading that variant and running it "
              f"(imports alone: {peaks[('vit', 'imports only')]:.0f} MB)\n")
        print("| step | variant | min s | median s | x plain (min) | CPU s | x plain (CPU) | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for kind, label, seconds in (
            ("vit", "ViT-base 224x224 + attentions", vit_s),
            ("blip", f"BLIP-base 384x384, {args.tokens} tokens", blip_s),
        ):
            for variant, (low, median, cpu) in seconds.items():
                ratio, cpu_ratio = low / seconds["plain fp32"][0], cpu / seconds["plain fp32"][2]
                peak = peaks[(kind, variant)]
                print(
                    f"| {label} | {variant} | {low:.3f} | {median:.3f} | {ratio:.2f} | {cpu:.3f} | {cpu_ratio:.2f} "
                    f"| {peak:.0f} |"
                )

        # Fidelity of int8: ViT features and rollout; captions of the test images.
        a, b = node_vit32.patches([vit_image])[0], node_vit8.patches([vit_image])[0]
        flat_a, flat_b = a.embeddings.reshape(-1, a.embeddings.shape[-1]), b.embeddings.reshape(-1, a.embeddings.shape[-1])
        cosine = (flat_a * flat_b).sum(-1) / (np.linalg.norm(flat_a, axis=-1) * np.linalg.norm(flat_b, axis=-1))
        rollout_r = float(np.corrcoef(a.rollout.ravel(), b.rollout.ravel())[0, 1])
        print(f"\nViT int8 vs fp32: token cosine similarity min {cosine.min():.4f} (median {np.median(cosine):.4f}); "
              f"rollout correlation {rollout_r:.4f}")
        node_blip8.max_new_tokens = node_blip32.max_new_tokens = 30
        print("\n| test image | plain fp32 caption | node int8 caption | same |")
        print("|---|---|---|---|")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readers' warnings about the test files' own defects
            images = caption_images()
        same_all = True
        for name, pixels in images:
            rgb = np.repeat(np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
            with torch.inference_mode():
                inputs = plain["blip_processor"](images=rgb, return_tensors="pt")
                ids = plain["blip"].generate(**inputs, max_new_tokens=30, num_beams=1, do_sample=False)
            reference = " ".join(str(plain["blip_processor"].decode(ids[0], skip_special_tokens=True)).split())
            fp32, int8 = node_blip32.caption(pixels), node_blip8.caption(pixels)
            same = int8 == reference
            same_all &= same
            assert fp32 == reference, f"node fp32 caption differs from plain fp32 on {name}"
            print(f"| {name} | {reference[:48]} | {int8[:48]} | {'yes' if same else 'NO'} |")
        print(f"\nnode fp32 captions equal plain fp32 on every image; int8 captions {'equal' if same_all else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
