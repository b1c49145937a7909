"""``tvdeploy eval``: the task's metric (accuracy, mIoU or COCO AP) of an exported file or a model."""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, json_destination, note_random_weights, progress_bar


def eval_cmd(
    artifact: str = typer.Argument(..., help="An exported file (.onnx, …) or a model name."),
    data: str = typer.Option(..., "--data", help="Classification: a folder of class subfolders. Segmentation: a "
                                                 "folder with images/ and annotations/ (label PNGs). "
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
    """Classification: top-1/top-5 accuracy on class subfolders. Segmentation: mIoU, aAcc, per-class IoU.
    Detection: COCO AP (pycocotools). Same numbers on every runtime."""
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.predictor import Predictor

    json_out = json_destination(json_path)
    options = {"input_size": input_size} if input_size else {}
    with Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights, **options) as predictor:
        if predictor.backend.name == "torch" and weights is None:
            note_random_weights(artifact)
        with progress_bar() as progress:
            metrics = predictor.task.evaluate(predictor, data, on_batch=progress(Path(artifact).name, "evaluating"),
                                              reduce_zero_label=reduce_zero_label, images=images, data_seed=data_seed)
        title = f"{artifact} ({predictor.backend.describe()}) on {metrics.images} images of {data}"
        console.print(predictor.task.render_metrics(metrics, title))
        if json_out:
            write_json(json_out, {"artifact": str(artifact), "backend": predictor.backend.describe(), **metrics.as_dict()})
