"""One small interface for every runtime (Polygraphy-style loader + runner).

A backend loads one artifact, says what it expects (:class:`TensorInfo`), runs NumPy arrays and
returns NumPy arrays. Everything model-specific (input size, preprocessing, class names) comes
from the artifact's :class:`ModelSpec`, so the Predictor and ``bench`` never branch on a backend's name.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import time

import numpy as np

from tinyvim_deploy.models.registry import ModelSpec


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints, or None/str for dynamic dimensions
    dtype: str


def run_in_batches(run, batch: np.ndarray, static_batch: int | None) -> list[np.ndarray]:
    """``run`` (one fixed-size batch -> outputs) over a batch of any size: split into ``static_batch`` pieces, the
    last one padded with zeros and the padding dropped from the outputs. No static batch: one call."""
    if static_batch is None or static_batch == len(batch):
        return run(batch)
    pieces: list[list[np.ndarray]] = []
    for start in range(0, len(batch), static_batch):
        chunk = batch[start : start + static_batch]
        n = len(chunk)
        if n < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - n, *chunk.shape[1:]), chunk.dtype)])
        pieces.append([o[:n] for o in run(chunk)])
    return [np.concatenate(parts) for parts in zip(*pieces)]


class Backend(abc.ABC):
    """Load an artifact once; ``run`` many times; ``close`` (or use as a context manager)."""

    name: str = "base"

    def __init__(self, artifact, *, device: str | None = None, threads: int | None = None, **options):
        self.artifact = artifact
        self.device = device or "cpu"
        self.threads = threads
        self.options = options
        t0 = time.perf_counter()
        self._load()
        self.load_seconds = time.perf_counter() - t0

    # -- what each backend writes -------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Read the artifact; set ``self.spec``, ``self.input_hw`` and ``self.class_names``."""

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one float32 NCHW batch."""

    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @abc.abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    def close(self) -> None:  # noqa: B027  (optional hook: most runtimes free on garbage collection)
        """Release the runtime's resources."""

    # -- shared behaviour ---------------------------------------------------------------------------
    spec: ModelSpec
    input_hw: tuple[int, int]
    class_names: list[str]

    @property
    def dynamic_hw(self) -> bool:
        """Whether the artifact takes any input height/width (else exactly ``input_hw``)."""
        dims = self.inputs()[0].shape
        return not all(isinstance(d, int) and d > 0 for d in dims[2:4])

    @property
    def static_batch(self) -> int | None:
        dim = self.inputs()[0].shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run a batch of any size (split into the artifact's static batch if it has one)."""
        return run_in_batches(self._run, np.ascontiguousarray(batch, dtype=np.float32), self.static_batch)

    def warmup(self, runs: int = 3) -> None:
        x = np.zeros((self.static_batch or 1, 3, *self.input_hw), np.float32)
        for _ in range(runs):
            self._run(x)

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def thread_count(self) -> int | None:
        """Threads the runtime computes with (what was asked, else the runtime's default)."""
        return self.threads or os.cpu_count()

    def reset_peak_memory(self) -> None:  # noqa: B027  (only device runtimes track their own memory)
        """Start a new peak-memory window (device memory, where the runtime reports it)."""

    def peak_memory_mb(self) -> float | None:
        """Peak device memory since :meth:`reset_peak_memory`, or None where not reported."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
