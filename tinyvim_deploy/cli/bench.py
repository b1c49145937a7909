"""``tvdeploy bench``: latency, throughput and memory of one artifact, or a table across formats."""

from __future__ import annotations

from pathlib import Path

import typer

from tinyvim_deploy.cli.console import console, json_destination, note_random_weights, progress_bar
from tinyvim_deploy.errors import ImageError


def bench_cmd(
    artifact: str = typer.Argument("tinyvim-s", help="An exported file or a model name."),
    compare: str | None = typer.Option(None, "--compare", help="Formats to compare, e.g. torch,onnx (model name)."),
    backend: str | None = typer.Option(None, "--backend", "-b", help="Runtime (default: from the file type)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, … (backend-specific)."),
    threads: int | None = typer.Option(None, "--threads"),
    weights: Path | None = typer.Option(None, "--weights", "-w", help="Checkpoint, for a model name."),
    batch: int = typer.Option(1, "--batch"),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
    iterations: int = typer.Option(100, "--iterations", "-n", help="Timed runs (ignored with --duration)."),
    duration: float | None = typer.Option(None, "--duration", help="Time for this many seconds instead."),
    images: list[Path] | None = typer.Option(None, "--images", help="Time end to end on these images/folders."),
    input_size: str | None = typer.Option(None, "--input-size", help="N or HxW, for a model name."),
    export_dir: Path | None = typer.Option(None, "--export-dir", help="Keep --compare's exports here."),
    fp16: bool = typer.Option(False, "--fp16", help="torch on CUDA: FP16 autocast."),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="torch on CUDA, TensorRT: capture and replay a CUDA graph."),
    compile_model: bool = typer.Option(False, "--compile", help="torch: torch.compile the model."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results as JSON here (- for stdout)."),
) -> None:
    """Latency percentiles, throughput, load time and memory for one artifact, or a table across formats."""
    import tempfile

    from tinyvim_deploy.environment import environment_report
    from tinyvim_deploy.fileio import write_json
    from tinyvim_deploy.images import collect_images
    from tinyvim_deploy.predictor import Predictor
    from tinyvim_deploy.profiling import benchmark, compare_formats
    from tinyvim_deploy.reports import bench_table, compare_table

    json_out = json_destination(json_path)
    decoded = [Predictor.decode(p)[0] for p in collect_images(images)] if images else None
    if images and not decoded:
        raise ImageError(f"No image files found in {', '.join(map(str, images))}.")
    plan = {"batch": batch, "warmup": warmup, "iterations": iterations, "duration": duration, "images": decoded}
    options = {"fp16": fp16, "cuda_graph": cuda_graph, "compile": compile_model}
    if not compare:  # load first: a bad artifact is reported before any progress bar is drawn
        predictor = Predictor(artifact, backend=backend, device=device, threads=threads, weights=weights,
                              input_size=input_size, **{k: v for k, v in options.items() if v})
        if predictor.backend.name == "torch" and weights is None:
            note_random_weights(artifact)
    elif weights is None:  # every format is exported from the one model built here
        note_random_weights(artifact)
    with progress_bar() as progress:
        if compare:
            formats = [f.strip().lower() for f in compare.split(",") if f.strip()]
            with tempfile.TemporaryDirectory(prefix="tvdeploy-bench-") as tmp:
                rows = compare_formats(artifact, formats, weights=weights, workdir=export_dir or tmp, device=device,
                                       threads=threads, input_size=input_size, on_format=progress, **plan)
            title = f"{artifact}: {', '.join(formats)} · batch {batch} · {'end to end' if decoded else 'inference'}"
            console.print(compare_table(rows, title))
            payload = {"model": artifact, "rows": [r.as_dict() for r in rows]}
        else:
            result = benchmark(predictor, progress=progress(str(artifact)), **plan)
            predictor.close()
            console.print(bench_table(result))
            payload = {"result": result.as_dict()}
    if json_out:
        write_json(json_out, {"environment": environment_report(), **payload})
