"""Generation: the request (torch-free), the run, schedulers, A1111 infotext and output saving.

Import the submodules directly; this package imports nothing so `studio.generation.request` stays torch-free.
"""
