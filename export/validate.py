"""Export-then-validate (Optimum/Polygraphy style): the ONNX file against PyTorch on the same inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tinyvim_deploy.export.checks import Check, ValidationReport, map_agreement_miou  # noqa: F401  (re-exported)
from tinyvim_deploy.runtimes.onnxruntime import ort_session, run_session
from tinyvim_deploy.tasks import get_task
from tinyvim_deploy.tasks.detection import matched_fraction, raw_detection_checks  # noqa: F401  (re-exported)


def photo_batch(photos_dir: str | os.PathLike | None, size: tuple[int, int], spec, limit: int = 8) -> np.ndarray | None:
    """Real photos preprocessed the model's way, if a folder of them is available."""
    if not photos_dir or not Path(photos_dir).is_dir():
        return None
    from tinyvim_deploy.images import IMAGE_SUFFIXES, ImageError, load_image

    images = []
    for path in sorted(Path(photos_dir).iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            try:
                images.append(load_image(path))
            except ImageError:
                continue
        if len(images) == limit:
            break
    if not images:
        return None
    return get_task(spec.task).preprocess(images, spec, tuple(size))[0]


def validation_inputs(size: tuple[int, int], batches: Sequence[int], spec, photos_dir=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = {f"random batch {b}": rng.standard_normal((b, 3, *size), dtype=np.float32) for b in batches}
    photos = photo_batch(photos_dir, size, spec)
    if photos is not None:
        if len(batches) == 1:  # static batch: feed the photos in batches of that size
            n = batches[0]
            photos = np.concatenate([photos] * n)[: max(n, len(photos) // n * n)]
        inputs[f"{len(photos)} photos"] = photos
    return inputs


def validate_onnx(onnx_path, torch_model: torch.nn.Module, inputs: dict[str, np.ndarray], atol: float = 1e-4,
                  task: str = "classification") -> ValidationReport:
    """The exported file in ONNX Runtime (its backend splits batches into a static batch) against the eager model,
    judged the task's way."""
    from tinyvim_deploy.runtimes.onnxruntime import OnnxRuntimeBackend

    judge = get_task(task)
    checks = []
    with OnnxRuntimeBackend(onnx_path) as backend:
        reference_names = [t.name for t in judge.torch_outputs(backend.spec)]
        for name, x in inputs.items():
            with torch.no_grad():
                ref = torch_model(torch.from_numpy(x)).numpy()
            got = by_name(reference_names, [t.name for t in backend.outputs()], backend.run(x))
            checks += judge.compare([ref], got, name, atol, x)
    return ValidationReport(checks, atol)


def by_name(reference_names: list[str], candidate_names: list[str], candidate: list[np.ndarray]) -> list[np.ndarray]:
    """The candidate's outputs in the reference's order, matched by name (Polygraphy's comparator does the same);
    by position where the names differ (a segmentor exported with its label map renames its output)."""
    index = {n: i for i, n in enumerate(candidate_names)}
    if all(n in index for n in reference_names):
        return [candidate[index[n]] for n in reference_names]
    return list(candidate)


def print_report(report: ValidationReport, console, title: str = "ONNX Runtime vs PyTorch") -> None:
    from rich.table import Table

    table = Table(title=title)
    segmentation = any(c.miou is not None for c in report.checks)
    labels = all(c.labels for c in report.checks)
    columns = ["input", *(("pixels differ",) if labels else ("max abs diff", "mean abs diff")),
               "pixels agree" if segmentation else "top-1 agree"]
    for col in columns + (["mIoU (argmax)"] if segmentation else []) + ["verdict"]:
        table.add_column(col)
    for c in report.checks:
        top1 = "-" if c.top1_agree is None else f"{c.top1_agree:.{2 if segmentation else 0}%}"
        verdict = "[green]✓[/]" if c.passed else "[red]✗[/]"
        extra = [f"{c.miou:.4f}" if c.miou is not None else "-"] if segmentation else []
        diffs = [f"{c.max_abs:.2%}"] if labels else [f"{c.max_abs:.2e}", f"{c.mean_abs:.2e}"]
        table.add_row(c.name, *diffs, top1, *extra, verdict)
    console.print(table)
    word = "[bold green]✓ PASS[/]" if report.passed else "[bold red]✗ FAIL[/]"
    if all(c.labels for c in report.checks):
        console.print(f"{word}: label maps differ on {report.max_abs:.3%} of pixels at most (allowed 0.1%: argmax ties)")
    else:
        console.print(f"{word}: max abs diff {report.max_abs:.2e} (atol {report.atol:g})")


def validate_detector(raw_model: bytes, final_path, torch_model: torch.nn.Module, inputs: dict[str, np.ndarray],
                      nms_config, atol: float = 1e-4, run_nms: bool = True) -> ValidationReport:
    """A detector export, in three checks per input (drkd.md §7.3):

    1. raw outputs: the network part in ORT vs PyTorch, boxes in units of the input side (a box coordinate of
       320 px differs by ~1e-5 px between float32 runtimes, so pixels would test float resolution, not parity)
       and scores as they are, both ≤ ``atol``;
    2. NMS: the exported NMS on ORT's raw outputs vs the PyTorch reference NMS on the *same* raw outputs —
       exact (same count, classes and order; boxes/scores ≤ 1e-6);
    3. end to end (information): share of PyTorch's detections that ORT's final output has (same class,
       IoU ≥ 0.9). Near-tied scores may swap between runtimes, so this is reported, not required.
    """
    from tinyvim_deploy.tasks.nms import Detections, multiclass_nms

    raw_session = ort_session(raw_model)
    final_session = ort_session(str(final_path)) if run_nms else None
    checks = []
    for name, x in inputs.items():
        boxes, scores = run_session(raw_session, x)
        with torch.no_grad():
            ref_boxes, ref_scores = (t.numpy() for t in torch_model(torch.from_numpy(x)))
        checks += raw_detection_checks(name, x, ref_boxes, ref_scores, boxes, scores, atol)
        if final_session is None:
            continue
        got = Detections(*run_session(final_session, x))
        same_raw = multiclass_nms(torch.from_numpy(boxes), torch.from_numpy(scores), **nms_config.as_kwargs())
        same_raw = Detections(*(t.numpy() for t in same_raw))
        exact = (np.array_equal(got.num_dets, same_raw.num_dets) and np.array_equal(got.classes, same_raw.classes))
        det_diff = max(float(np.abs(got.boxes - same_raw.boxes).max()), float(np.abs(got.scores - same_raw.scores).max()))
        images_equal = float(np.mean([np.array_equal(got.classes[b], same_raw.classes[b])
                                      for b in range(len(x))]))
        checks.append(Check(f"{name}: NMS vs reference NMS", det_diff, det_diff, images_equal,
                            exact and det_diff <= 1e-6))
        checks.append(end_to_end_check(name, ref_boxes, ref_scores, got, nms_config))
    return ValidationReport(checks, atol)


def end_to_end_check(name: str, ref_boxes: np.ndarray, ref_scores: np.ndarray, got, nms_config) -> Check:
    """Information, not judged: the share of PyTorch's final detections (reference NMS on its raw outputs)
    that another runtime's final output has. Near-tied scores may swap between runtimes."""
    from tinyvim_deploy.tasks.nms import Detections, multiclass_nms

    with torch.no_grad():
        reference = multiclass_nms(torch.from_numpy(ref_boxes), torch.from_numpy(ref_scores), **nms_config.as_kwargs())
    agree = matched_fraction(Detections(*(t.numpy() for t in reference)), got)
    return Check(f"{name}: detections vs PyTorch (info)", 1.0 - agree, 1.0 - agree, agree, True, info=True)


def top_detection_check(name: str, x: np.ndarray, ref_boxes: np.ndarray, ref_scores: np.ndarray, got, atol: float,
                        score_threshold: float, num_classes: int | None) -> Check:
    """Post-NMS detections of another runtime (TensorRT) judged where ties cannot decide the outcome.

    Per image: the best score equals the reference's best raw score within ``atol`` (NMS keeps the global
    maximum, a continuous function of the scores, unlike the rest of its output); the best box is the box
    of a reference *candidate* (any anchor) of the same class scored within ``2·atol`` of the top, within
    ``atol`` in units of the input side like the raw boxes (with random weights hundreds of candidates
    tie, and which of them NMS keeps is chance; their boxes may be degenerate, so no IoU);
    an image is empty only if the reference's best is within ``atol`` of the threshold; and the contract
    holds (0 ≤ num_dets ≤ K, finite values, scores non-increasing, class ids in range). ``max_abs`` is the
    largest top-score difference; top-1 the share of images that pass.
    """
    batch, k_max = got.scores.shape
    worst, passed = 0.0, 0
    for b in range(batch):
        k_got = int(got.num_dets[b, 0])
        if not 0 <= k_got <= k_max:
            continue
        scores, classes = got.scores[b, :k_got], got.classes[b, :k_got]
        sane = bool(np.isfinite(got.boxes[b, :k_got]).all() and np.isfinite(scores).all()
                    and np.all(np.diff(scores) <= atol) and np.all(classes >= 0)
                    and (num_classes is None or np.all(classes < num_classes)))
        ref_best = float(ref_scores[b].max())
        if ref_best <= score_threshold + atol or k_got == 0:  # near the threshold either answer is right
            passed += sane and (k_got > 0 or ref_best <= score_threshold + atol)
            continue
        diff = abs(ref_best - float(scores[0]))
        worst = max(worst, diff)
        near = ref_scores[b, :, int(classes[0])] >= ref_best - 2 * atol
        box_diff = np.abs(ref_boxes[b][near] - got.boxes[b, 0]).max(axis=1) / float(max(x.shape[-2:]))
        passed += sane and diff <= atol and bool((box_diff <= atol).any())
    return Check(f"{name}: best detection vs PyTorch", worst, worst, passed / batch, passed == batch)
