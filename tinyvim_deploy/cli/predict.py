"""``tvdeploy predict``: classify, segment or detect images with an exported file or a model."""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, err_console, json_destination, note_random_weights
from tinyvim_deploy.errors import ArtifactError, ImageError


def predict_cmd(
    artifact: str = typer.Argument(..., help="An exported file (.onnx) or a model name."),
    images: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    topk: int = typer.Option(5, "--topk", "-k", help="Classes to show per image."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here (- for stdout)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, … (backend-specific)."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, when ARTIFACT is a model name."),
    labels: Path | None = typer.Option(None, "--labels", help="Class names, one per line."),
    batch: int = typer.Option(8, "--batch", help="Images per inference call."),
    save_dir: Path | None = typer.Option(None, "--save-dir", help="Segmentation: overlays and label PNGs; "
                                                                    "detection: images with their boxes drawn."),
    conf: float = typer.Option(0.25, "--conf", help="Detection: show detections scoring at least this."),
    slide: bool = typer.Option(False, "--slide", help="Segmentation: sliding windows of the artifact's input size."),
    stride: str | None = typer.Option(None, "--stride", help="With --slide: N or HxW (default 2/3 of the window)."),
) -> None:
    """Classify, segment or detect. A file that cannot be read is reported and skipped; the exit code is then 1."""
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.images import collect_images
    from tinyvim_deploy.predictor import Predictor

    json_out = json_destination(json_path)
    if batch < 1:
        raise ArtifactError(f"Batch size must be at least 1, got {batch}.")
    paths = collect_images(images)
    if not paths:
        raise ImageError(f"No image files found in {', '.join(map(str, images))}.")
    predictor = Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights, labels=labels,
                          topk=topk, score_threshold=conf)
    if predictor.backend.name == "torch" and weights is None:
        note_random_weights(artifact)
    if save_dir and not predictor.task.saves_images:
        raise ArtifactError(f"--save-dir is for segmentation and detection; this model is a {predictor.task.name} model.")
    decoded, errors = [], []
    for path in paths:
        try:
            decoded.append(predictor.decode(path))
        except ImageError as e:
            errors.append({"source": str(path), "error": str(e)})
            err_console.print(f"[yellow]skipped:[/] {e}", highlight=False, soft_wrap=True)
    options = {}
    if slide or stride:
        from tinyvim_deploy.models import parse_input_size

        options = {"slide": True, "stride": parse_input_size(stride, None) if stride else None}
    results = predictor.predict(decoded, batch, **options)
    for result, (rgb, _) in zip(results, decoded):
        console.print(predictor.task.render(result, topk))
        if save_dir:
            predictor.task.save(result, rgb, save_dir)
    if json_out:
        write_json(json_out, {"artifact": str(artifact), "backend": predictor.backend.describe(),
                              "results": [r.as_dict() for r in results], "errors": errors})
    predictor.close()
    if errors:
        err_console.print(f"{len(errors)} of {len(paths)} files could not be read.")
        raise typer.Exit(1)

