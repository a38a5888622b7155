"""Every error a user can cause, in one place.

Each class also subclasses the builtin that best describes it (as huggingface_hub does), so callers
that only know Python's exceptions still catch them. Front ends catch `StudioError` exactly once:
the UI turns it into `gr.Error`, the CLI prints one line and exits with code 2.

Messages say what is wrong, show the value, and say what to do.
"""


class StudioError(Exception):
    """Base class for errors caused by user input or the user's files."""


class InvalidRequestError(StudioError, ValueError):
    """A request field has a value we cannot use (size, steps, scheduler name...)."""


class ModelNotFoundError(StudioError, FileNotFoundError):
    """A model name, folder, file or Hub id that does not exist or cannot be reached."""


class UnsupportedModelError(StudioError, ValueError):
    """A file or folder that exists but is not an SD1.5/SDXL model we can load."""


class UnsafeFileError(StudioError, PermissionError):
    """A pickle checkpoint (or other unsafe format) the user did not opt in to load."""


class UnsafePathError(StudioError, PermissionError):
    """A name from the UI that would escape its folder (`../`, absolute paths...)."""


class OutOfMemoryError(StudioError, MemoryError):
    """The accelerator ran out of memory; the message suggests the next memory mode."""


class LoraError(StudioError, ValueError):
    """An adapter that cannot be read, is for another base model, or is not a LoRA."""


class DatasetError(StudioError, ValueError):
    """A training folder that is empty, unreadable or has no usable image/caption pairs."""


class TrainingError(StudioError, RuntimeError):
    """Training could not start or continue (bad settings, missing checkpoint to resume...)."""


class HubError(StudioError, RuntimeError):
    """A Hub operation failed: bad token, repo owned by someone else, no network."""


class BusyError(StudioError, RuntimeError):
    """The GPU is in use by another job (a training run, another generation)."""


class CancelledError(StudioError, RuntimeError):
    """The user pressed Stop; partial results were kept where that makes sense."""


class DiskFullError(StudioError, OSError):
    """A write ran out of room: the disk is full, a quota or a file-size limit was reached (ENOSPC, EDQUOT, EFBIG)."""


class FolderNotWritableError(StudioError, PermissionError):
    """A folder Studio must write into is read-only, missing and cannot be made, or not a folder at all."""


class UnreadableImageError(StudioError, OSError):
    """An image file that is empty, truncated, not an image, or a decompression bomb (header claims huge pixels)."""
