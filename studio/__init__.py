"""Studio: a local art studio for Stable Diffusion 1.5 and SDXL, built on diffusers."""

__version__ = "0.1.0"
