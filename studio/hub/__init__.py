"""The Hugging Face Hub: downloads with progress and error mapping, adapter push/import, the model card.

Import the submodules directly; this package imports nothing so the CLI's checks stay fast.
"""
