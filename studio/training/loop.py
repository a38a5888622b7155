"""The step loop: each optimizer step averages the loss of `gradient_accumulation` micro-batches.

A micro-batch: take the cached latents of its images, draw noise and timesteps, let the UNet predict the
noise (or the velocity, for v-prediction models) from the noisy latents, and take the MSE, optionally
min-SNR weighted. Every random draw comes from a generator seeded with (seed, micro-batch index), and
the data order is a function of the seed (`order.py`), so a resumed run replays the same draws.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
import torch.nn.functional as F

from studio.models.kinds import ModelKind
from studio.training import cache as caching
from studio.training.events import TrainingEvent
from studio.training.resume import save
from studio.training.setup import Run, tokenizers_and_encoders
from studio.training.validation import sample

MAX_GRAD_NORM = 1.0


def train_steps(run: Run, start: int, should_stop: Callable[[], bool]) -> bool:
    """Steps `start` to the end, with samples and checkpoints on the way; False when stopped (checkpoint kept)."""
    request = run.request
    for module in run.trained.values():
        module.train()
    train_seconds, timed_steps = 0.0, 0  # the pace of training steps alone, without samples and checkpoints
    for step in range(start, run.total):
        step_started = time.perf_counter()
        if stop_requested(should_stop, run.accelerator):
            with run.clock.phase("checkpoints"):
                stop_at(run, step)
            return False
        with run.clock.phase("steps"):
            loss = optimizer_step(run, step)
        done = step + 1
        run.state["losses"].append([done, loss])
        timed_steps += 1
        train_seconds += time.perf_counter() - step_started
        pace = train_seconds / timed_steps
        lr = run.lr_scheduler.get_last_lr()[0]
        eta = pace * (run.total - done)
        run.emit(TrainingEvent("step", step=done, total_steps=run.total, loss=loss, lr=lr, sec_per_step=pace, eta=eta))
        if done < run.total and due(done, request.validation_every) and request.samples and run.main:
            with run.clock.phase("samples"):  # the last one comes at finish
                run.state["samples"].append(sample(run, done))
        if done < run.total and due(done, request.checkpoint_every):  # the adapter itself follows the last step
            with run.clock.phase("checkpoints"):
                save(run, done)
    return True


def due(step: int, every: int) -> bool:
    """Whether something done every `every` steps (0: never) is due after `step` steps."""
    return bool(every) and step % every == 0


def stop_at(run: Run, step: int) -> None:
    """Stop pressed before `step`: checkpoint the steps done so far, so Resume continues from there."""
    path = save(run, step)  # None on the processes that do not write it
    message = f"Stopped at step {step}; resume continues from there."
    kept = str(path) if path else None
    run.emit(TrainingEvent("stopped", step=step, total_steps=run.total, path=kept, message=message))


def stop_requested(should_stop: Callable[[], bool], accelerator) -> bool:
    stop = bool(should_stop())
    if accelerator.num_processes > 1:  # every process must stop at the same step
        flag = torch.tensor(float(stop), device=accelerator.device)
        stop = bool(accelerator.reduce(flag, "max").item())
    return stop


def optimizer_step(run: Run, step: int) -> float:
    """One optimizer step: accumulate the gradients of its micro-batches, clip, update; returns the mean loss."""
    accelerator, accumulation = run.accelerator, run.request.gradient_accumulation
    world, rank = accelerator.num_processes, accelerator.process_index
    step_loss = torch.zeros((), device=run.device)
    for micro in range(accumulation):
        index = (step * accumulation + micro) * world + rank  # this process's micro-batch of the whole run
        with contextlib.ExitStack() as stack:
            if micro < accumulation - 1:  # sync gradients across GPUs once per optimizer step, not per micro-batch
                for module in run.modules.values():
                    stack.enter_context(accelerator.no_sync(module))
            loss = micro_batch_loss(run, run.order.micro_batch(index), noise_generator(run.request.seed, index))
            accelerator.backward(loss / accumulation)
        step_loss += loss.detach() / accumulation
    accelerator.clip_grad_norm_(run.params, MAX_GRAD_NORM)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(step_loss, "mean").item() if world > 1 else step_loss.item()


def noise_generator(seed: int, micro_batch: int) -> torch.Generator:
    """The noise of each micro-batch comes from its own CPU generator: the same on resume, on any device."""
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + micro_batch) % 2**63)


def micro_batch_loss(run: Run, batch: list[tuple[int, bool]], generator: torch.Generator) -> torch.Tensor:
    """The training loss of one micro-batch of (sample index, flipped)."""
    request, scheduler = run.request, run.noise_scheduler
    entries = [run.data.latents[i, flipped] for i, flipped in batch]
    latents, noise, timesteps = draw_noise(run, entries, generator)
    noisy = scheduler.add_noise(latents, noise, timesteps).to(run.weight_dtype)
    text = text_embeddings(run, [i for i, _ in batch])
    extra = {}
    if run.kind is ModelKind.SDXL:
        time_ids = [sdxl_time_ids(run, i, entry) for (i, _), entry in zip(batch, entries)]
        time_ids = torch.tensor(time_ids, device=run.device)
        extra["added_cond_kwargs"] = {"text_embeds": text[1], "time_ids": time_ids.to(run.weight_dtype)}
    prediction = run.modules["unet"](noisy, timesteps, text[0], return_dict=False, **extra)[0].float()

    prediction_type = scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    if request.min_snr_gamma is None:
        return F.mse_loss(prediction, target.float())
    per_sample = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3))
    weights = min_snr_weights(timestep_snr(scheduler, timesteps), request.min_snr_gamma, prediction_type)
    return (per_sample * weights).mean()


def draw_noise(run: Run, entries: list, generator: torch.Generator):
    """The latents (a fresh sample of each cached VAE distribution), the noise and the timesteps, on the device.

    The draws keep this order, from one generator: a resumed run must replay them exactly."""
    latents = torch.stack([mean + std * torch.randn(mean.shape, generator=generator) for mean, std, _crop in entries])
    noise = torch.randn(latents.shape, generator=generator)
    if run.request.noise_offset:  # a per-channel shift: lets the model learn darker darks and brighter brights
        noise += run.request.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    num_timesteps = run.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (len(entries),), generator=generator)
    return latents.to(run.device), noise.to(run.device), timesteps.to(run.device)


def text_embeddings(run: Run, indices: list[int]) -> list[torch.Tensor]:
    """The captions' embeddings: from the cache, or encoded now when the text encoders train."""
    if run.data.texts is not None:
        cached = [run.data.texts[i] for i in indices]
        return [torch.stack(parts).to(run.device, run.weight_dtype) for parts in zip(*cached)]
    captions = [run.data.samples[i].caption for i in indices]
    pairs = tokenizers_and_encoders(run.pipe, run.kind, run.modules)  # the prepared encoders, so DDP syncs their grads
    return [t.to(run.weight_dtype) for t in caching.encode_text(pairs, captions, run.device)]


def sdxl_time_ids(run: Run, index: int, entry: list[torch.Tensor]) -> list[int]:
    """SDXL's size conditioning: original size, crop top-left, target size, as (height, width) pairs."""
    sample, (bucket_w, bucket_h) = run.data.samples[index], run.data.buckets[index]
    top, left = (int(v) for v in entry[2])
    return [sample.height, sample.width, top, left, bucket_h, bucket_w]


def timestep_snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) of each timestep.

    diffusers.training_utils.compute_snr is the same quantity computed as (sqrt(a) / sqrt(1 - a)) ** 2; its
    float32 rounding differs by up to ~3.4e-7 relative, so this form stays: the weights of runs trained
    before keep their exact values (tests/test_training_phases.py compares the two).
    """
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1 - alphas_cumprod)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR (Hang et al. 2023): each timestep's loss weight, capped so easy, low-noise timesteps stop
    dominating the gradient. The cap is min(SNR, gamma) on the clean-image loss; the noise (epsilon) loss
    is SNR times that loss and the velocity loss SNR + 1 times it, hence the divisors."""
    weights = torch.clamp(snr, max=gamma)
    return weights / snr if prediction_type == "epsilon" else weights / (snr + 1)
