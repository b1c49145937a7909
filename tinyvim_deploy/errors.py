"""The toolkit's exception hierarchy.

Every error a user can cause (a wrong file, a bad size, an unknown name) is raised as one of these
classes with a one-line message; the CLI prints that line and exits with code 2. Each class also
subclasses the built-in exception a Python user would expect, so ``except ValueError`` still works.
"""

from __future__ import annotations


class TinyViMDeployError(Exception):
    """Base class of every error raised on purpose by tinyvim_deploy."""

    exit_code = 2  # user error: the CLI prints the message and exits with this code

    def __init__(self, message: str):
        # One line, always: the CLI shows it as is, without a traceback.
        super().__init__(" ".join(str(message).split()))


class UnknownModelError(TinyViMDeployError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class CheckpointError(TinyViMDeployError, ValueError):
    """A checkpoint file that cannot be used for the requested model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class InputSizeError(TinyViMDeployError, ValueError):
    """An input size the model cannot run (TinyViM needs multiples of 32)."""


class ExportError(TinyViMDeployError, RuntimeError):
    """An export that could not be produced."""


class ValidationError(TinyViMDeployError, AssertionError):
    """An exported artifact whose outputs do not match PyTorch within tolerance."""

    exit_code = 1


class ArtifactError(TinyViMDeployError, ValueError):
    """An artifact (ONNX file, engine, package) that cannot be loaded or is missing metadata."""


class ImageError(TinyViMDeployError, ValueError):
    """An image file that is missing, empty, truncated or not an image."""


class BackendUnavailableError(TinyViMDeployError, ImportError):
    """A runtime backend whose library is not installed or cannot run here."""


class CalibrationError(TinyViMDeployError, ValueError):
    """Calibration data missing, empty or unreadable; or quantization could not meet its budget."""


class DatasetError(TinyViMDeployError, ValueError):
    """An evaluation folder that cannot be used: missing, empty, unpaired images, unreadable label maps."""
