"""PyTorch eager backend: a registered model name (+ optional weights), on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from tinyvim_deploy.errors import BackendUnavailableError
from tinyvim_deploy.runtimes.base import Backend, TensorInfo


class TorchBackend(Backend):
    name = "torch"

    def _load(self) -> None:
        from tinyvim_deploy.models import create_model, reparameterize

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA was requested but torch here has no CUDA device.")
        if self.threads:
            torch.set_num_threads(self.threads)
        model = create_model(str(self.artifact), weights=self.options.get("weights"))
        self.spec = model.spec
        self.input_hw = tuple(self.spec.input_size[1:])
        self.class_names = list(self.spec.class_names)
        if self.options.get("reparameterize", True):
            model = reparameterize(model)
        if self.options.get("compile"):
            model = torch.compile(model)
        self.model = model.to(self.device)
        self.fp16 = bool(self.options.get("fp16")) and self.device.startswith("cuda")

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(batch).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
            y = self.model(x)
        return [y.float().cpu().numpy()]

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo("image", (None, 3, *self.input_hw), "float32")]

    def outputs(self) -> list[TensorInfo]:
        return [TensorInfo("logits", (None, self.spec.num_classes), "float32")]
