"""Write a trained adapter folder, `loras/<name>/`, all at once or not at all.

    pytorch_lora_weights.safetensors   diffusers (alpha kept in the adapter metadata)
    <name>.safetensors                 kohya/A1111/ComfyUI, with ss_* and modelspec.* metadata
    adapter.json                       the manifest other parts of Studio read (see the shared contract)
    README.md                          model card (studio.hub.model_card)
    samples/*.png                      validation images with A1111 infotext

Everything is written into a hidden temporary folder beside the target and renamed at the end, so the
LoRA tab never sees a half-written adapter, even if the process dies mid-export.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import torch

import studio
from studio.atomic import make_readable, staging_folder
from studio.errors import TrainingError
from studio.lora.files import MODELSPEC_ARCHITECTURE, LoraWeights, save_diffusers_lora, save_kohya_lora
from studio.models.kinds import ModelKind
from studio.training.request import TrainingRequest

MANIFEST = "adapter.json"
KOHYA_BASE_VERSION = {ModelKind.SD15: "sd_v1", ModelKind.SDXL: "sdxl_base_v1-0"}


def lora_weights(trained: dict[str, torch.nn.Module], kind: ModelKind, alpha: float) -> LoraWeights:
    """The trained LoRA layers as peft state dicts (fp32 on the CPU), per component."""
    from peft import get_peft_model_state_dict

    layers = {
        name: {k: v.detach().to("cpu", torch.float32) for k, v in get_peft_model_state_dict(module).items()}
        for name, module in trained.items()
    }
    return LoraWeights(kind=kind, layers=layers, alphas={name: float(alpha) for name in trained})


def export_adapter(
    output_dir: Path,
    *,
    run_dir: Path,
    trained: dict[str, torch.nn.Module],
    request: TrainingRequest,
    kind: ModelKind,
    state: dict,
    num_images: int,
    precision: str,
) -> Path:
    weights = lora_weights(trained, kind, request.alpha)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # The folder is built under its real name (the model card quotes it) inside a hidden temporary folder.
    tmp = staging_folder(output_dir)
    staging = tmp.parent
    try:
        save_diffusers_lora(weights, tmp)
        save_kohya_lora(
            weights,
            tmp / f"{request.name}.safetensors",
            metadata=kohya_metadata(request, kind, num_images, precision, now),
        )
        (tmp / "samples").mkdir()
        for sample in state["samples"]:
            source = run_dir / sample["file"]
            if source.is_file():
                shutil.copy2(source, tmp / sample["file"])
        manifest = {
            "name": request.name,
            "base_model": request.model,
            "base_kind": kind.value,
            "trigger_words": [request.trigger] if request.trigger else [],
            "rank": request.rank,
            "alpha": request.alpha,
            "text_encoder": request.train_text_encoder,
            # Only the data folder's name: the full local path (user name, disk layout) must not travel to the Hub.
            "settings": {
                **request.to_json(),
                "data": Path(request.data).name,
                "mixed_precision": precision,
                "num_images": num_images,
            },
            "blend": None,
            "samples": [s for s in state["samples"] if (tmp / s["file"]).is_file()],
            "created": now.isoformat(),
            "studio_version": studio.__version__,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        from studio.hub.model_card import build_model_card

        build_model_card(tmp).save(tmp / "README.md")
        make_readable(tmp)
        try:
            tmp.rename(output_dir)
        except OSError as error:
            raise TrainingError(
                f"{output_dir} appeared while training ({error}); the adapter is kept in {tmp}; move it yourself."
            ) from error
        staging.rmdir()
    except TrainingError:
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def kohya_metadata(
    request: TrainingRequest, kind: ModelKind, num_images: int, precision: str, now: datetime.datetime
) -> dict[str, str]:
    """The `ss_*` keys kohya's sd-scripts write (read by A1111's and Civitai's LoRA info) and `modelspec.*`."""
    resolution = f"{request.resolution}x{request.resolution}"
    tags = {request.trigger: num_images} if request.trigger else {}
    values = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": request.rank,
        "ss_network_alpha": request.alpha,
        "ss_base_model_version": KOHYA_BASE_VERSION[kind],
        "ss_sd_model_name": request.model,
        "ss_output_name": request.name,
        "ss_resolution": f"({request.resolution}, {request.resolution})",
        "ss_num_train_images": num_images,
        "ss_max_train_steps": request.steps,
        "ss_learning_rate": request.learning_rate,
        "ss_unet_lr": request.learning_rate,
        "ss_text_encoder_lr": request.learning_rate if request.train_text_encoder else 0,
        "ss_network_train_unet_only": not request.train_text_encoder,
        "ss_lr_scheduler": request.lr_scheduler,
        "ss_lr_warmup_steps": request.warmup_steps,
        "ss_batch_size_per_device": request.batch_size,
        "ss_gradient_accumulation_steps": request.gradient_accumulation,
        "ss_gradient_checkpointing": request.gradient_checkpointing,
        "ss_mixed_precision": precision,
        "ss_seed": request.seed,
        "ss_enable_bucket": request.buckets,
        "ss_flip_aug": request.random_flip,
        "ss_min_snr_gamma": request.min_snr_gamma,
        "ss_noise_offset": request.noise_offset or None,
        "ss_tag_frequency": json.dumps({"dataset": tags}),
        "ss_training_finished_at": now.timestamp(),
        "ss_training_comment": f"trained with Studio {studio.__version__}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[kind],
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": request.name,
        "modelspec.resolution": resolution,
        "modelspec.date": now.isoformat(),
        "modelspec.trigger_phrase": request.trigger,
    }
    return {key: str(value) for key, value in values.items() if value is not None}
