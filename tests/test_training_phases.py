"""The small pure pieces of the trainer's phases: min-SNR weights, the SNR itself, noise seeds, step counts."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from studio.training.loop import due, min_snr_weights, noise_generator, timestep_snr
from studio.training.order import DataOrder
from studio.training.request import TrainingRequest
from studio.training.setup import count_steps

# SD1.5's and SDXL's training schedule.
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.fixture(scope="module")
def scheduler():
    return DDPMScheduler(**SD_SCHEDULE)


def test_snr_is_alpha_bar_over_one_minus_alpha_bar_and_matches_diffusers(scheduler):
    timesteps = torch.arange(1000)
    alpha_bar = scheduler.alphas_cumprod  # float32
    snr = timestep_snr(scheduler, timesteps)
    assert snr.dtype == torch.float32
    assert torch.equal(snr, alpha_bar / (1 - alpha_bar))  # the formula earlier runs were trained with, bit for bit
    # diffusers' compute_snr is the same quantity, rounded differently in float32 (a few ulp).
    torch.testing.assert_close(snr, compute_snr(scheduler, timesteps), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "prediction_type, weight",
    [
        ("epsilon", lambda snr, gamma: torch.minimum(snr, torch.full_like(snr, gamma)) / snr),
        ("v_prediction", lambda snr, gamma: torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)),
    ],
)
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_follow_the_paper(scheduler, prediction_type, weight, gamma):
    snr = timestep_snr(scheduler, torch.tensor([0, 10, 100, 500, 999]))
    weights = min_snr_weights(snr, gamma, prediction_type)
    torch.testing.assert_close(weights, weight(snr, gamma), rtol=0, atol=0)
    assert weights.max() <= 1.0  # a cap: no timestep counts more than in the plain loss
    if prediction_type == "epsilon":  # noisy timesteps (SNR below gamma) keep their full weight
        assert torch.equal(weights[snr <= gamma], torch.ones_like(weights[snr <= gamma]))


def test_noise_of_a_micro_batch_depends_on_seed_and_index_only():
    def draw(seed, index):
        return torch.randn(4, generator=noise_generator(seed, index))

    assert torch.equal(draw(7, 3), draw(7, 3))  # a resumed run draws what the first run drew
    assert not torch.equal(draw(7, 3), draw(7, 4)) and not torch.equal(draw(7, 3), draw(8, 3))


@pytest.mark.parametrize(
    "epochs, accumulation, world, expected",
    [(None, 1, 1, 12), (1, 1, 1, 5), (2, 1, 1, 10), (3, 2, 1, 8), (3, 2, 2, 4)],
)
def test_step_count_covers_the_epochs_on_every_process(tmp_path, epochs, accumulation, world, expected):
    request = TrainingRequest(
        data=tmp_path, model="demo-sd15", name="x", steps=12, epochs=epochs, gradient_accumulation=accumulation
    )
    order = DataOrder([(64, 64)] * 7 + [(64, 96)] * 2, batch_size=2, seed=0, random_flip=False)
    assert order.per_epoch == 5  # 4 batches of the 7 square images, 1 of the 2 tall ones
    assert count_steps(request, order, world) == expected


def test_checkpoints_and_samples_come_every_n_steps_or_never():
    assert [step for step in range(1, 9) if due(step, 3)] == [3, 6]
    assert not any(due(step, 0) for step in range(1, 9))
