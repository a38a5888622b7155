"""Write a trained adapter folder, `loras/<name>/`, all at once or not at all.

    pytorch_lora_weights.safetensors   diffusers (alpha kept in the adapter metadata)
    <name>.safetensors                 kohya/A1111/ComfyUI, with ss_* and modelspec.* metadata
    adapter.json                       the manifest other parts of Studio read (studio.lora.folder)
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
from studio.atomic import disk_full_as_error, make_readable, replace_folder, staging_folder
from studio.errors import TrainingError
from studio.hub.public import copy_public
from studio.lora.files import LoraWeights
from studio.lora.folder import AdapterManifest, kohya_metadata, public_name, save_adapter_files
from studio.models.kinds import ModelKind
from studio.models.precision import precision_name
from studio.training.request import TrainingRequest


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
        (tmp / "samples").mkdir()
        for sample in state["samples"]:
            source = run_dir / sample["file"]
            if source.is_file():  # its infotext names the base model: by its name, never by a local path
                copy_public(source, tmp / sample["file"])
        manifest = AdapterManifest(
            name=request.name,
            # A local base (file or folder) is recorded by its name, as kohya's sd-scripts do; Hub ids stay ids.
            base_model=public_name(request.model),
            base_kind=kind,
            trigger_words=[request.trigger] if request.trigger else [],
            rank=request.rank,
            alpha=request.alpha,
            text_encoder=request.train_text_encoder,
            # Only the folders' names: the full local path (user name, disk layout) must not travel to the Hub.
            settings={
                **request.to_json(),
                "data": Path(request.data).name,
                "model": public_name(request.model),
                "mixed_precision": precision,
                "precision": precision_name(precision),  # what the frozen weights ran in: fp16, bf16 or fp32
                "num_images": num_images,
            },
            blend=None,
            samples=[s for s in state["samples"] if (tmp / s["file"]).is_file()],
            created=now.isoformat(),
            studio_version=studio.__version__,
        )
        metadata = kohya_metadata(
            manifest,
            comment=f"trained with Studio {studio.__version__}",
            training=training_metadata(request, num_images, precision, now),
        )
        with disk_full_as_error(output_dir.parent):
            save_adapter_files(tmp, weights, manifest, metadata=metadata)
        make_readable(tmp)
        try:
            replace_folder(tmp, output_dir, overwrite=False)
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


def training_metadata(
    request: TrainingRequest, num_images: int, precision: str, now: datetime.datetime
) -> dict[str, object]:
    """The kohya `ss_*` training values of a run (see `studio.lora.folder.kohya_metadata` for the rest)."""
    tags = {request.trigger: num_images} if request.trigger else {}
    return {
        "ss_resolution": f"({request.resolution}, {request.resolution})",
        "ss_num_train_images": num_images,
        "ss_max_train_steps": request.steps,
        "ss_learning_rate": request.learning_rate,
        "ss_unet_lr": request.learning_rate,
        "ss_text_encoder_lr": request.learning_rate if request.train_text_encoder else 0,
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
        "modelspec.resolution": f"{request.resolution}x{request.resolution}",
    }
