"""PyTorch eager backend: a registered model name (+ optional weights), on CPU or CUDA.

Options: ``weights``, ``input_size`` (N or HxW), ``reparameterize`` (default True: the deploy form),
``compile`` (``torch.compile``), and on CUDA ``fp16`` (autocast) and ``cuda_graph`` (capture once per
batch shape, then replay: removes the per-kernel launch cost that dominates batch 1).
"""

from __future__ import annotations

import numpy as np
import torch

from tinyvim_deploy.errors import BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo
from tinyvim_deploy.tasks import get_task


class TorchBackend(Backend):
    name = "torch"

    def _load(self) -> None:
        import dataclasses

        from tinyvim_deploy.models import check_input_size, create_model, parse_input_size, reparameterize

        self.cuda = self.device.startswith("cuda")
        if self.cuda and not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA was requested but torch here has no CUDA device.")
        if self.threads:
            torch.set_num_threads(self.threads)
        model = create_model(str(self.artifact), weights=self.options.get("weights"))
        self.input_hw = parse_input_size(self.options.get("input_size"), tuple(model.spec.input_size[1:]))
        check_input_size(*self.input_hw, model.spec.size_multiple)
        self.spec = dataclasses.replace(model.spec, input_size=(3, *self.input_hw))
        self.class_names = list(self.spec.class_names)
        if self.options.get("reparameterize", True):
            model = reparameterize(model)
        if self.options.get("compile"):
            model = torch.compile(model)
        self.model = model.to(self.device)
        self.fp16 = bool(self.options.get("fp16")) and self.cuda
        self.use_graph = bool(self.options.get("cuda_graph")) and self.cuda
        self._graphs: dict[tuple, tuple] = {}  # batch shape -> (graph, static input, static output)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            return self.model(x)

    def _graph_for(self, shape: tuple) -> tuple:
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up outside the graph (allocator, cuDNN autotune)
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        return self._graphs[shape]

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(batch)
        if self.use_graph:
            graph, static_in, static_out = self._graph_for(tuple(batch.shape))
            static_in.copy_(x, non_blocking=False)
            graph.replay()
            y = static_out
        else:
            y = self._forward(x.to(self.device))
        outputs = y if isinstance(y, (tuple, list)) else (y,)  # detectors return (boxes, scores)
        return [t.float().cpu().numpy() for t in outputs]

    def inputs(self) -> list[TensorInfo]:
        # a segmentor in eager PyTorch takes any size (the official pipeline decides it) unless one was set
        free = get_task(self.spec.task).any_input_size and not self.options.get("input_size")
        return [TensorInfo("image", (None, 3, *(("height", "width") if free else self.input_hw)), "float32")]

    def outputs(self) -> list[TensorInfo]:
        return get_task(self.spec.task).torch_outputs(self.spec)

    def describe(self) -> str:
        extras = [k for k, on in (("fp16", self.fp16), ("cuda graph", self.use_graph),
                                  ("compiled", self.options.get("compile"))) if on]
        return f"torch on {self.device}" + (f" ({', '.join(extras)})" if extras else "")

    def thread_count(self) -> int | None:
        return torch.get_num_threads()

    def reset_peak_memory(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 1e6 if self.cuda else None
