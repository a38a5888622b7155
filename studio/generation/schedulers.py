"""Samplers by the names A1111 users know, mapped to diffusers schedulers.

Classes are named, not imported, so the CLI's --help and request checks run without importing diffusers.
"""

from __future__ import annotations

from studio.errors import InvalidRequestError

# name -> (diffusers scheduler class name, extra config, A1111 "Sampler", A1111 "Schedule type")
SCHEDULERS = {
    "Euler": ("EulerDiscreteScheduler", {}, "Euler", None),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, "Euler a", None),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M", None),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M SDE",
        "Karras",
    ),
    "DDIM": ("DDIMScheduler", {}, "DDIM", None),
    "UniPC": ("UniPCMultistepScheduler", {}, "UniPC", None),
    "Heun": ("HeunDiscreteScheduler", {}, "Heun", None),
    "LMS": ("LMSDiscreteScheduler", {}, "LMS", None),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, "LMS", "Karras"),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
DEFAULT_SCHEDULER = "DPM++ 2M Karras"


def check_scheduler_name(name: str) -> None:
    if name not in SCHEDULERS:
        raise InvalidRequestError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler from the model's own scheduler config (betas, prediction type) plus the sampler's options."""
    import diffusers

    check_scheduler_name(name)
    class_name, extra, _sampler, _schedule = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config({**base_config, **extra})


def a1111_sampler(name: str) -> tuple[str, str | None]:
    """The `Sampler` and `Schedule type` A1111 writes for this scheduler."""
    _cls, _extra, sampler, schedule = SCHEDULERS[name]
    return sampler, schedule


def from_a1111(sampler: str, schedule: str | None) -> str | None:
    """Our scheduler name for an A1111 Sampler/Schedule type pair, or None if we have no equivalent."""
    if sampler.endswith(" Karras"):  # older A1111 versions folded the schedule into the sampler name
        sampler, schedule = sampler[: -len(" Karras")], "Karras"
    for name, (_cls, _extra, a_sampler, a_schedule) in SCHEDULERS.items():
        if a_sampler == sampler and (
            a_schedule == schedule or (a_schedule is None and schedule in (None, "Automatic"))
        ):
            return name
    return None
