"""TensorRT backend: runs a serialized engine (``.engine``) with the TensorRT runtime and cuda-python.

An engine is only valid for the TensorRT version and the GPU it was built for, so every engine we
write has a JSON sidecar (``<engine>.json``) with our model metadata, the TensorRT version, the GPU
name and compute capability, the batch profile and the engine's sha256. Loading checks all of them
and says "rebuild" in one line instead of failing inside TensorRT. The engine file itself is the
plain serialized plan (``trtexec --loadEngine`` reads it).

Memory and streams come from cuda-python (``cuda.bindings.runtime``), not PyTorch, so this runs on
a Jetson with only JetPack's TensorRT and ``pip install cuda-python``. Host buffers are pinned;
device buffers are allocated once for the largest batch of the profile. Option ``cuda_graph=True``
captures ``execute_async_v3`` once per input shape and replays it.

Written against TensorRT 10.x/11.x's documented Python API and type-checked with mypy against
``tensorrt-stubs`` (``typings/``); our CI has no GPU and no TensorRT, so it never executes here.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyvim_deploy.errors import ArtifactError, BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo

if TYPE_CHECKING:  # annotations only: TensorRT is imported inside the functions that run it
    import tensorrt as trt

SIDECAR_FORMAT = "tinyvim-deploy/tensorrt-engine@1"
INSTALL_HINT = ("on Jetson it comes with JetPack (python3-libnvinfer; then pip install cuda-python); on x86 with an "
                "NVIDIA GPU: pip install 'tinyvim-deploy[tensorrt]' (TensorRT's wheels come from NVIDIA's index)")


def import_tensorrt() -> Any:
    """``import tensorrt``, or one line telling how to get it (nothing has been written yet)."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed here: {INSTALL_HINT}.") from None
    if not hasattr(tensorrt, "Builder"):  # tensorrt-stubs installed without TensorRT: an empty namespace package
        raise BackendUnavailableError(f"'tensorrt' here is an empty package (type stubs only?): {INSTALL_HINT}.")
    return tensorrt


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise ArtifactError(f"Unrecognised TensorRT version {version!r}.") from None


# --------------------------------------------------------------------------------------------------
# The sidecar: what the engine is, and what it was built for
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile for the batch dimension (min <= opt <= max)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ArtifactError(f"Batch profile needs 1 <= min <= opt <= max, got {self.min},{self.opt},{self.max}.")

    @property
    def static(self) -> bool:
        return self.min == self.max

    def shapes(self, input_hw: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW input shapes for ``IOptimizationProfile.set_shape``."""
        return tuple((b, 3, *input_hw) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class EngineSidecar:
    metadata: dict[str, str]  # the ONNX file's tinyvim_deploy.* metadata (spec, classes, preprocessing)
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # fp32 | fp16 | int8
    strongly_typed: bool
    input_name: str
    batch_profile: BatchProfile
    onnx_sha256: str
    engine_sha256: str
    dla_core: int | None = None
    plugin_libs: tuple[str, ...] = ()
    format: str = SIDECAR_FORMAT

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["batch_profile"] = [self.batch_profile.min, self.batch_profile.opt, self.batch_profile.max]
        data["plugin_libs"] = list(self.plugin_libs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> EngineSidecar:
        if data.get("format") != SIDECAR_FORMAT:
            raise ArtifactError(f"{source} is not a tinyvim-deploy engine sidecar (format {data.get('format')!r}).")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if missing:
            raise ArtifactError(f"{source} lacks {', '.join(missing)}: rebuild the engine with tvdeploy export.")
        values = {k: v for k, v in data.items() if k in fields}
        values["batch_profile"] = BatchProfile(*values["batch_profile"])
        values["plugin_libs"] = tuple(values.get("plugin_libs", ()))
        return cls(**values)


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | os.PathLike[str]) -> EngineSidecar:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(f"{engine} has no sidecar {path.name}: engines must be built by tvdeploy export "
                            "--target trt (the sidecar records the model, TensorRT version and GPU).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ArtifactError(f"{path} is not readable JSON.") from None
    return EngineSidecar.from_json(data, str(path))


def check_compatible(sidecar: EngineSidecar, *, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     engine_sha256: str | None = None, source: str = "engine") -> None:
    """Refuse, in one line, an engine built for another TensorRT or GPU (TensorRT plans are not portable)."""
    rebuild = "rebuild it on this machine with `tvdeploy export --target trt`"
    if engine_sha256 is not None and engine_sha256 != sidecar.engine_sha256:
        raise ArtifactError(f"{source} does not match its sidecar (sha256 differs): {rebuild}.")
    if sidecar.tensorrt_version != tensorrt_version:
        raise ArtifactError(f"{source} was built with TensorRT {sidecar.tensorrt_version}, this is TensorRT "
                            f"{tensorrt_version}: {rebuild}.")
    if sidecar.compute_capability != compute_capability or sidecar.gpu_name != gpu_name:
        raise ArtifactError(f"{source} was built for {sidecar.gpu_name} (compute {sidecar.compute_capability}), this "
                            f"GPU is {gpu_name} (compute {compute_capability}): {rebuild}.")


# --------------------------------------------------------------------------------------------------
# cuda-python: the few runtime calls we need, with errors turned into one line
# --------------------------------------------------------------------------------------------------


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailableError("cuda-python is not installed: pip install cuda-python (its major version "
                                          "must match the CUDA of your driver/JetPack).") from None
    return cudart


def cuda_call(result: tuple[Any, ...]) -> Any:
    """cuda-python returns ``(error, *values)``: raise on error, return the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise BackendUnavailableError(f"CUDA call failed: {getattr(err, 'name', err)}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_device_index(device: str) -> int:
    """``cuda``/``cuda:N`` -> N (``cpu`` is the Backend default when no device was named: GPU 0)."""
    if device in ("cpu", "cuda", "gpu"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendUnavailableError(f"TensorRT runs on a CUDA GPU: use --device cuda or cuda:N, not {device!r}.")


def gpu_identity(cudart: Any, device: int) -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device, as recorded in the sidecar."""
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclasses.dataclass
class _Buffer:
    """One I/O tensor: pinned host memory viewed as NumPy, and device memory, both for the max shape."""

    name: str
    dtype: np.dtype[Any]
    max_shape: tuple[int, ...]
    host_ptr: int
    device_ptr: int
    nbytes: int

    def host(self, shape: tuple[int, ...]) -> np.ndarray:
        raw = memoryview((ctypes.c_byte * self.nbytes).from_address(self.host_ptr)).cast("B")
        view: np.ndarray = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(shape))).reshape(shape)
        return view


class TensorRTBackend(Backend):
    name = "tensorrt"

    def _load(self) -> None:
        from tinyvim_deploy.export.metadata import class_names_from_metadata, spec_from_metadata
        from tinyvim_deploy.fileio import file_sha256

        engine_path = Path(self.artifact)
        if not engine_path.is_file():
            raise ArtifactError(f"TensorRT engine not found: {engine_path}")
        sidecar = self.options.get("sidecar") or read_sidecar(engine_path)
        self.sidecar: EngineSidecar = sidecar
        self.spec, self.input_hw = spec_from_metadata(sidecar.metadata, str(engine_path))
        self.class_names = class_names_from_metadata(sidecar.metadata)
        self.metadata = sidecar.metadata

        trt_module = import_tensorrt()
        cudart = import_cudart()
        device = cuda_device_index(str(self.device))
        cuda_call(cudart.cudaSetDevice(device))
        gpu_name, capability = gpu_identity(cudart, device)
        check_compatible(sidecar, tensorrt_version=trt_module.__version__, gpu_name=gpu_name,
                         compute_capability=capability, engine_sha256=file_sha256(engine_path), source=str(engine_path))
        self.device = f"cuda:{device} ({gpu_name})"
        self._cudart = cudart
        self._init_engine(engine_path.read_bytes())

    def _init_engine(self, plan: bytes) -> None:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        runtime = trt.Runtime(logger)
        for lib in self.sidecar.plugin_libs:  # plugin creators must be registered before deserializing
            runtime.get_plugin_registry().load_library(lib)
        if self.sidecar.dla_core is not None:
            runtime.DLA_core = self.sidecar.dla_core
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.artifact}: rebuild it with tvdeploy export.")
        self._runtime: trt.Runtime = runtime
        self._engine: trt.ICudaEngine = engine
        self._context: trt.IExecutionContext = engine.create_execution_context()
        self._stream: Any = cuda_call(self._cudart.cudaStreamCreate())
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input = next(n for n in self._names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._outputs = [n for n in self._names if n != self._input]
        self._graphs: dict[tuple[int, ...], Any] = {}
        self._buffers = self._allocate(self.sidecar.batch_profile.max)

    def _allocate(self, max_batch: int) -> dict[str, _Buffer]:
        """Pinned host + device buffers for the profile's largest batch (shapes read back from the context)."""
        import tensorrt as trt

        self._context.set_input_shape(self._input, (max_batch, 3, *self.input_hw))
        buffers = {}
        for name in self._names:
            shape = dims_tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            host = cuda_call(self._cudart.cudaMallocHost(nbytes))
            device = cuda_call(self._cudart.cudaMalloc(nbytes))
            buffers[name] = _Buffer(name, dtype, shape, int(host), int(device), nbytes)
            self._context.set_tensor_address(name, int(device))
        return buffers

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        limit = self.sidecar.batch_profile.max
        if len(batch) > limit:  # beyond the profile: run in slices of the largest batch it was built for
            parts = [self._run(batch[i : i + limit]) for i in range(0, len(batch), limit)]
            return [np.concatenate(p) for p in zip(*parts)]
        if len(batch) < self.sidecar.batch_profile.min:
            raise ArtifactError(f"Batch {len(batch)} is below the engine's profile minimum "
                                f"{self.sidecar.batch_profile.min}.")
        cudart, stream = self._cudart, self._stream
        shape = tuple(batch.shape)
        if not self._context.set_input_shape(self._input, shape):
            raise ArtifactError(f"The engine does not accept input shape {shape}.")
        inp = self._buffers[self._input]
        inp.host(shape)[...] = batch
        cuda_call(cudart.cudaMemcpyAsync(inp.device_ptr, inp.host_ptr, batch.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        self._execute(shape)
        out_shapes = {n: dims_tuple(self._context.get_tensor_shape(n)) for n in self._outputs}
        for name in self._outputs:
            buf = self._buffers[name]
            nbytes = int(np.prod(out_shapes[name])) * buf.dtype.itemsize
            cuda_call(cudart.cudaMemcpyAsync(buf.host_ptr, buf.device_ptr, nbytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        cuda_call(cudart.cudaStreamSynchronize(stream))
        # copies (the pinned buffers are reused); FP16 outputs as float32, integer ones (NMS counts, classes) kept
        outputs = [self._buffers[n].host(out_shapes[n]) for n in self._outputs]
        return [o.astype(np.float32) if o.dtype == np.float16 else o.copy() for o in outputs]

    def _execute(self, shape: tuple[int, ...]) -> None:
        """Enqueue the engine, or replay its CUDA graph (captured on the second call for this shape)."""
        cudart, stream = self._cudart, self._stream
        if not self.options.get("cuda_graph"):
            if not self._context.execute_async_v3(int(stream)):
                raise ArtifactError("TensorRT execution failed (see the TensorRT log above).")
            return
        graph_exec = self._graphs.get(shape)
        if graph_exec is None:
            # One plain run first: TensorRT may allocate or set up lazily, which a capture must not see.
            self._context.execute_async_v3(int(stream))
            cuda_call(cudart.cudaStreamSynchronize(stream))
            cuda_call(cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            self._context.execute_async_v3(int(stream))
            graph = cuda_call(cudart.cudaStreamEndCapture(stream))
            graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
            self._graphs[shape] = graph_exec
        cuda_call(cudart.cudaGraphLaunch(graph_exec, stream))

    def inputs(self) -> list[TensorInfo]:
        return [self._info(self._input)]

    def outputs(self) -> list[TensorInfo]:
        return [self._info(n) for n in self._outputs]

    def _info(self, name: str) -> TensorInfo:
        import tensorrt as trt

        shape = tuple(d if d >= 0 else None for d in dims_tuple(self._engine.get_tensor_shape(name)))
        dtype = str(np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
        return TensorInfo(name, shape, dtype)

    def thread_count(self) -> int | None:
        return None

    def peak_memory_mb(self) -> float | None:
        """The engine's activation memory plus our I/O buffers (TensorRT allocates nothing else at run time)."""
        activations = int(self._engine.device_memory_size_v2)
        return (activations + sum(b.nbytes for b in self._buffers.values())) / 2**20

    def describe(self) -> str:
        s = self.sidecar
        return f"TensorRT {s.tensorrt_version} {s.precision} on {self.device}"

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for buf in getattr(self, "_buffers", {}).values():
            cudart.cudaFreeHost(buf.host_ptr)
            cudart.cudaFree(buf.device_ptr)
        self._buffers = {}
        for graph_exec in self._graphs.values():
            cudart.cudaGraphExecDestroy(graph_exec)
        self._graphs = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
