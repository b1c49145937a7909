"""``tvdeploy eval``: segmentation mIoU or detection COCO AP of an exported file or a model."""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, json_destination, note_random_weights, progress_bar
from tinyvim_deploy.errors import ArtifactError


def eval_cmd(
    artifact: str = typer.Argument(..., help="A segmentation or detection artifact (.onnx, …) or model name."),
    data: str = typer.Option(..., "--data", help="Segmentation: folder with images/ and annotations/ (label PNGs). "
                                                 "Detection: a COCO folder (json + images) or synthetic:shapesdet."),
    reduce_zero_label: bool = typer.Option(True, "--reduce-zero-label/--no-reduce-zero-label",
                                           help="ADE20K: label value 0 is ignored, v means class v-1."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device"),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, when ARTIFACT is a model name."),
    input_size: str | None = typer.Option(None, "--input-size",
                                          help="Model name: a fixed input box (as an export has) instead of the "
                                               "official test pipeline's sizes."),
    images: int = typer.Option(200, "--images", help="Detection, synthetic: how many test images."),
    data_seed: int = typer.Option(0, "--data-seed", help="Detection, synthetic: which images."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the metrics as JSON here (- for stdout)."),
) -> None:
    """Segmentation: mIoU, aAcc, per-class IoU. Detection: COCO AP (pycocotools). Same numbers on every runtime."""
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.predictor import Predictor
    from tinyvim_deploy.reports import eval_table
    from tinyvim_deploy.tasks.segmentation import evaluate_segmentation, pair_images_and_labels

    json_out = json_destination(json_path)
    options = {"input_size": input_size} if input_size else {}
    detection_data = data.startswith("synthetic:") or any(Path(data).glob("*.json")) or any(
        Path(data).glob("annotations/*.json"))
    total = 0 if detection_data else len(pair_images_and_labels(Path(data)))  # a bad folder: one line, no model load
    with Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights, **options) as predictor:
        if predictor.backend.name == "torch" and weights is None:
            note_random_weights(artifact)
        if predictor.task.name == "detection":
            _eval_detection(predictor, artifact, data, images, data_seed, json_out)
            return
        if predictor.task.name != "segmentation" or detection_data:
            raise ArtifactError(f"{artifact} is a {predictor.task.name} model and {data} is "
                                f"{'detection' if detection_data else 'segmentation'} data: eval needs a segmentor "
                                "with label maps or a detector with COCO boxes.")
        with progress_bar() as progress:
            tick = progress(Path(artifact).name, "evaluating")
            done = iter(range(1, total + 1))
            metrics = evaluate_segmentation(predictor, Path(data), reduce_zero_label,
                                            on_image=lambda _: tick and tick(next(done), total))
        console.print(eval_table(metrics, predictor.class_names, f"{artifact} on {data}"))
        if json_out:
            write_json(json_out, {"artifact": str(artifact), "backend": predictor.backend.describe(),
                                  **metrics.as_dict(predictor.class_names)})


def _eval_detection(predictor, artifact: str, data: str, images: int, data_seed: int, json_out) -> None:
    from tinyvim_deploy.cli.datasets import load_detection_data
    from tinyvim_deploy.coco_eval import evaluate_predictor
    from tinyvim_deploy.fileio import write_json

    size = predictor.backend.input_hw[0]
    dataset = load_detection_data(data, "test", images, size, data_seed)
    with progress_bar() as progress:
        metrics = evaluate_predictor(predictor, dataset, on_batch=progress(Path(artifact).name, "evaluating"))
    console.print(f"{artifact} ({predictor.backend.describe()}) on {len(dataset)} images of {data}:")
    for row in metrics.table():
        console.print("  " + row, highlight=False)
    if json_out:
        write_json(json_out, {"artifact": str(artifact), "backend": predictor.backend.describe(), **metrics.as_dict(),
                              "area_ranges": metrics.area_ranges})
