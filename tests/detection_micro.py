"""A micro TinyViM detector pair and data for the training tests (drkd.md §7.5 CI item 3), and the DDP worker.

Run as a script (``python tests/detection_micro.py OUT [method]``, alone or under ``torchrun``) it trains the
micro student for a few steps and saves its weights from rank 0: the 2-process vs 1-process test.
"""

from __future__ import annotations

import sys

import torch

from tinyvim_deploy.models.detection import DetectorConfig, TinyViMDetector
from tinyvim_deploy.models.tinyvim import TinyViM
from tinyvim_deploy.training.detect import DetectionSamples, DetectionTrainConfig, train_detector

SIZE = 96


def micro_detector(channels: int = 16, tower_depth: int = 1, seed: int = 0) -> TinyViMDetector:
    """Widths [16,24,48,64], depths [1,1,2,1]: every block type of TinyViM, in a few milliseconds."""
    torch.manual_seed(seed)
    backbone = TinyViM((16, 24, 48, 64), (1, 1, 2, 1), features_only=True)
    return TinyViMDetector(DetectorConfig("tinyvim-s", channels, tower_depth), backbone=backbone)


def micro_samples(n: int = 16, seed: int = 0) -> DetectionSamples:
    """ShapesDet images at 96² (letterboxed and normalised like the Predictor's)."""
    from tinyvim_deploy.models.registry import get_spec
    from tinyvim_deploy.training.detect import prepare_samples
    from tinyvim_deploy.training.shapesdet import make_detection_dataset

    spec = get_spec("tinyvim-s-det")
    return prepare_samples(make_detection_dataset(n, size=SIZE, seed=seed), SIZE, spec.mean, spec.std)


def main(out: str, method: str = "none") -> None:
    torch.set_num_threads(1)
    config = DetectionTrainConfig(epochs=1, batch_size=4, warmup_steps=2, freeze_bn=True, method=method,
                                  kd_weights=(1.0, 1.0, 1.0) if method == "drkd" else None)
    teacher = micro_detector(32, 2, seed=1) if method != "none" else None
    result = train_detector(micro_detector(), micro_samples(8), config, teacher=teacher)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({k: v.detach() for k, v in result.student.state_dict().items()}, out)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
