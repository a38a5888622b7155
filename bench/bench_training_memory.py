"""Activation memory of a LoRA training step on the full-size UNets, measured, against the VRAM estimate's constants.

`studio/training/presets.py` estimates peak VRAM as weights + LoRA state + activations + overhead. Weights and
LoRA state come from exact parameter counts; the activation term is bytes per training pixel, one constant per
model kind with and without gradient checkpointing. This measures that term on the machine at hand: the real
SD1.5 / SDXL UNet (random weights) in bf16 with the trainer's LoRA layers in fp32, bf16 autocast, one warm-up
step, then one step (forward, backward, AdamW) during which the process's allocated bytes (glibc `mallinfo2`) are
read after every tensor operation; the peak above the pre-step level is the step's activation and temporary memory.

On a CPU this counts what autograd keeps and what each op allocates. A GPU adds what a CPU cannot show: fp32
copies where CUDA autocast runs norms in fp32, cuDNN workspaces and the caching allocator's slack. So the goal
here is one-sided: the estimate's constant must not be below the measurement (ratio <= 1).

    python bench/bench_training_memory.py --quick    # SD1.5, 256 px, with and without gradient checkpointing
    python bench/bench_training_memory.py            # SD1.5 and SDXL
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time

from common import ROOT, Row, main_for, ratio_row

RESOLUTION = 256


def run(quick: bool) -> list[Row]:
    if not sys.platform.startswith("linux"):
        print("bench_training_memory needs glibc's mallinfo2 (Linux); skipped", file=sys.stderr)
        return []
    from studio.models.kinds import ModelKind
    from studio.training.presets import ACTIVATION_BYTES_PER_PIXEL

    kinds = [ModelKind.SD15] if quick else [ModelKind.SD15, ModelKind.SDXL]
    rows = []
    for kind in kinds:
        for checkpointing in (False, True):
            measured = _child(kind.value, checkpointing)
            constant = ACTIVATION_BYTES_PER_PIXEL[kind][1 if checkpointing else 0]  # fp16; bf16 has the same size
            label = f"{kind.label} {RESOLUTION}px, {'with' if checkpointing else 'no'} gradient checkpointing"
            rows.append(
                ratio_row(
                    f"training activations per pixel, {label}: measured (CPU bf16) vs estimate",
                    measured["peak_bytes"] / RESOLUTION**2,
                    constant,
                    "B/px",
                    max_ratio=1.0,
                    note=f"saved for backward {measured['saved_bytes'] / 2**20:.0f} MiB, "
                    f"peak {measured['peak_bytes'] / 2**20:.0f} MiB (CPU, bf16)",
                )
            )
    return rows


def _child(kind: str, checkpointing: bool) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(int(checkpointing))],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    values = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{kind} checkpointing={checkpointing}: {values} ({time.perf_counter() - started:.0f}s)", file=sys.stderr)
    return values


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def measure(kind_name: str, checkpointing: bool) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from torch.utils._python_dispatch import TorchDispatchMode

    from studio.models.kinds import ModelKind
    from studio.models.single_file import BUNDLED_CONFIGS
    from studio.training.trainer import UNET_TARGETS

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2

    def allocated() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + large mmapped blocks

    class PeakAllocated(TorchDispatchMode):
        """Reads the allocated bytes after every tensor operation: a peak can only follow an allocation."""

        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, allocated())
            return out

    kind, dtype = ModelKind(kind_name), torch.bfloat16
    folder = BUNDLED_CONFIGS[kind]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).to(dtype)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()  # as the trainer does under mixed precision
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    side = RESOLUTION // 8
    latents = torch.randn(1, 4, side, side, dtype=dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=dtype)
    extra = {}
    if kind is ModelKind.SDXL:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 1280, dtype=dtype),
            "time_ids": torch.tensor([[RESOLUTION, RESOLUTION, 0, 0, RESOLUTION, RESOLUTION]], dtype=dtype),
        }
    timesteps = torch.tensor([500])

    def step():
        with torch.autocast("cpu", dtype=dtype):
            prediction = unet(latents, timesteps, text, **extra).sample
        torch.nn.functional.mse_loss(prediction.float(), latents.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state and lazily built buffers exist before the measured step
    saved = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    weights = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    before = allocated()
    mode = PeakAllocated()
    with mode, torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        step()
    # With checkpointing the backward recomputes blocks, so "saved" then also counts recomputed tensors.
    saved_bytes = sum(size for pointer, size in saved.items() if pointer not in weights)
    return {"peak_bytes": mode.peak - before, "saved_bytes": saved_bytes}


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(measure(sys.argv[2], sys.argv[3] == "1")))
    else:
        main_for(run)
