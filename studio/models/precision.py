"""Which number format a model runs in, chosen from the device and, on CPUs, from what the CPU computes natively.

GPUs run fp16 (half the memory, tensor cores). CPUs with native bf16 (Intel AMX / AVX512-BF16, AMD Zen 4+) run a
full-size SD1.5 UNet step about 3x faster in bf16 than in fp32 (bench/bench_precision.py); on CPUs without it bf16
is emulated and slower, so they stay in fp32. fp16 is never picked on a CPU: slow and prone to overflow there.
An explicit `--dtype` always wins.
"""

from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """True when oneDNN reports bf16 kernels for this CPU (torch's own check, the one its CPU autocast uses)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def generation_dtype(requested: str, device_type: str, *, cpu_bf16: bool) -> str:
    """The torch dtype name for generation: `requested` unless it is "auto"."""
    if requested != "auto":
        return requested
    if device_type == "cpu":
        return "bfloat16" if cpu_bf16 else "float32"
    return "float16"


# torch dtypes (and their names) and accelerate's mixed-precision values, as the infotext's "Precision" key and the
# training settings' "precision" name them: "no" mixed precision means fp32 weights.
_SHORT_NAMES = {"float16": "fp16", "fp16": "fp16", "bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "no": "fp32"}


def precision_name(dtype) -> str:
    """ "fp16", "bf16" or "fp32" for torch.bfloat16, "bfloat16", accelerate's "bf16" ...: the number format that ran."""
    name = str(dtype).removeprefix("torch.")
    return _SHORT_NAMES.get(name, name)
