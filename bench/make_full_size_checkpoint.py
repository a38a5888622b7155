"""Prove the full-size single-file path offline: build, save, reload, generate.

Builds a pipeline with the real SD1.5 (or SDXL) architecture from Studio's bundled configs and
random weights (no download), saves it as one original-layout `.safetensors` in fp16 (~2 GB for
SD1.5, ~7 GB for SDXL) with `save_as_single_file`, loads it back with `load_single_file` and the
bundled configs, checks the UNet weights survived bit for bit, and generates one 64x64 image in
2 steps on the CPU. Prints the time of each stage. Random weights draw noise; this measures the
plumbing, not image quality.

    HF_HUB_OFFLINE=1 python bench/make_full_size_checkpoint.py --kind sd15
    HF_HUB_OFFLINE=1 python bench/make_full_size_checkpoint.py --kind sdxl --dtype float16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from studio.models.kinds import ModelKind, kind_of_checkpoint  # noqa: E402
from tests.builders import build_random_pipeline  # noqa: E402


@contextmanager
def stage(name: str):
    start = time.perf_counter()
    yield
    print(f"{name:<34} {time.perf_counter() - start:8.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=[k.value for k in ModelKind], default="sd15")
    parser.add_argument(
        "--dtype", choices=["float32", "float16"], default="float32", help="dtype to load back and generate in"
    )
    parser.add_argument("--out", type=Path, help="where to keep the checkpoint (default: a temporary file, deleted)")
    args = parser.parse_args()
    kind = ModelKind(args.kind)
    load_dtype = getattr(torch, args.dtype)

    from studio.models.original_layout import save_as_single_file
    from studio.models.single_file import load_single_file

    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out else None) as tmp:
        path = args.out or Path(tmp) / f"random-{kind.value}.safetensors"
        with stage(f"build random {kind.label} (fp16)"):
            pipe = build_random_pipeline(kind, torch.float16)
        unet_reference = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        with stage("save_as_single_file"):
            save_as_single_file(pipe, path)
        del pipe
        size_gb = path.stat().st_size / 1e9
        print(f"{'file size':<34} {size_gb:8.2f} GB   {path.name}")
        assert kind_of_checkpoint(path) is kind

        with stage(f"load_single_file ({args.dtype})"):
            loaded = load_single_file(path, kind, dtype=load_dtype)
        with stage("compare UNet weights"):
            theirs = loaded.unet.state_dict()
            changed = [k for k, v in unet_reference.items() if not torch.equal(v, theirs[k].to(v.dtype))]
        del unet_reference
        print(f"{'UNet tensors changed':<34} {len(changed):8d}   of {len(theirs)}")

        for attempt in ("first", "second"):
            with stage(f"generate 64x64, 2 steps ({attempt})"):
                loaded(
                    "a photo of a mountain",
                    num_inference_steps=2,
                    height=64,
                    width=64,
                    generator=torch.Generator("cpu").manual_seed(0),
                    output_type="np",
                )
        if changed:
            raise SystemExit(f"{len(changed)} UNet tensors differ after the round trip, e.g. {changed[0]}")


if __name__ == "__main__":
    main()
