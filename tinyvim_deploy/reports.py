"""Rich tables for what the CLI prints: predictions, one benchmark, a comparison across formats."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tinyvim_deploy.predictor import ClassificationResult
from tinyvim_deploy.profiling import BenchResult, FormatRow


def _fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def prediction_table(result: ClassificationResult) -> Group:
    table = Table()
    for col, justify in (("rank", "right"), ("class", "right"), ("label", "left"), ("probability", "right")):
        table.add_column(col, justify=justify)
    for rank, (index, label, score) in enumerate(zip(result.indices, result.labels, result.scores), start=1):
        table.add_row(str(rank), str(index), label, f"{score:.4f}")
    return Group(Text(result.source, style="bold"), table)  # a long path must not wrap inside a title


def detection_table(result, top: int = 20) -> Group:
    """tvdeploy predict on a detector: the best ``top`` detections, boxes in the image's pixels."""
    table = Table()
    for col, justify in (("#", "right"), ("label", "left"), ("score", "right"), ("x1", "right"), ("y1", "right"),
                         ("x2", "right"), ("y2", "right")):
        table.add_column(col, justify=justify)
    for rank, (box, score, label) in enumerate(zip(result.boxes[:top], result.scores[:top], result.labels[:top]), 1):
        table.add_row(str(rank), label, f"{score:.3f}", *(f"{v:.1f}" for v in box))
    more = f", {len(result) - top} more not shown" if len(result) > top else ""
    return Group(Text(f"{result.source}: {len(result)} detections{more}", style="bold"), table)


def segmentation_table(result, top: int = 5) -> Group:
    """tvdeploy predict on a segmentor: the classes covering most of the image."""
    table = Table()
    for col, justify in (("rank", "right"), ("class", "right"), ("label", "left"), ("area", "right")):
        table.add_column(col, justify=justify)
    for rank, (index, label, area) in enumerate(result.areas(top), start=1):
        table.add_row(str(rank), str(index), label, f"{area:.1%}")
    h, w = result.labels.shape
    return Group(Text(f"{result.source} ({w}x{h})", style="bold"), table)


def bench_table(r: BenchResult) -> Group:
    table = Table()
    for col in ("stage", "mean", "std", "min", "p50", "p90", "p99", "max"):
        table.add_column(col + ("" if col == "stage" else " ms"), justify="left" if col == "stage" else "right")
    rows = [("total" if r.stages else "inference", r.latency), *r.stages.items()]
    for name, s in rows:
        table.add_row(name, *(f"{v:.2f}" for v in (s.mean_ms, s.std_ms, s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms,
                                                   s.max_ms)))
    title = f"{r.artifact}: {r.backend}, batch {r.batch}, {r.threads} threads, {r.mode}"
    summary = (f"{r.iterations} runs after {r.warmup} warm-up · {r.throughput_ips:.1f} images/s · "
               f"load {r.load_s:.2f} s · first inference {r.first_inference_ms:.1f} ms · "
               f"peak RSS {_fmt(r.peak_rss_mb, '.0f')} MB"
               + (f" · CUDA peak {r.cuda_peak_mb:.0f} MB" if r.cuda_peak_mb is not None else ""))
    return Group(Text(title, style="bold"), table, Text(summary))  # long lines must not wrap to the table


def compare_table(rows: list[FormatRow], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("format", "status", "size MB", "max abs diff", "top-1", "load s", "first ms", "mean ms", "p50 ms",
               "p90 ms", "p99 ms", "images/s")
    for col in columns:
        table.add_column(col, justify="left" if col in ("format", "status") else "right")
    for row in rows:
        r = row.result
        lat = r.latency if r else None
        table.add_row(
            row.format, "✓" if row.status == "ok" else f"✗ {row.status}", _fmt(row.size_mb, ".1f"),
            _fmt(row.max_abs_diff, ".1e"), "-" if row.top1_agree is None else ("same" if row.top1_agree else "differs"),
            _fmt(r and r.load_s), _fmt(r and r.first_inference_ms, ".1f"), _fmt(lat and lat.mean_ms),
            _fmt(lat and lat.p50_ms), _fmt(lat and lat.p90_ms), _fmt(lat and lat.p99_ms),
            _fmt(r and r.throughput_ips, ".1f"),
        )
    return table


def sensitivity_table(budget) -> Table:
    """Per layer group: error when quantized alone, and whether it stays INT8 or goes back to float."""
    table = Table(title="INT8 sensitivity (each group quantized alone) and decision", title_justify="left")
    for col in ("group", "nodes", "rel. logit error", "top-1 agreement", "decision"):
        table.add_column(col, justify="left" if col in ("group", "decision") else "right")
    for g in budget.groups:
        table.add_row(g.name, str(len(g.nodes)), f"{g.relative_error:.2e}", f"{g.top1_agreement:.3f}",
                      "[yellow]float[/]" if g.decision == "float" else "int8")
    steps = [f"all int8 → top-1 agreement {budget.steps[0][1].top1_agreement:.4f}"]
    steps += [f"+ {name} in float → {a.top1_agreement:.4f}" for name, a in budget.steps[1:]]
    table.caption = "budget search on the calibration images: " + "; ".join(steps)
    table.caption_justify = "left"
    return table


def agreement_table(rows, title: str) -> Table:
    """One row per comparison (name, Agreement): agreement, cosine, accuracy and drop."""
    table = Table(title=title, title_justify="left")
    for col in ("compared", "images", "top-1 agreement", "top-5 agreement", "logit cosine", "max abs diff",
                "float acc.", "int8 acc.", "drop (points)"):
        table.add_column(col, justify="left" if col == "compared" else "right")
    for name, a in rows:
        table.add_row(name, str(a.n), f"{a.top1_agreement:.4f}", f"{a.top5_agreement:.4f}", f"{a.cosine:.5f}",
                      f"{a.max_abs_diff:.2e}", _fmt(a.float_accuracy and 100 * a.float_accuracy, ".2f"),
                      _fmt(a.quant_accuracy and 100 * a.quant_accuracy, ".2f"), _fmt(a.accuracy_drop, "+.2f"))
    return table


def check_table(report, artifact: str) -> Group:
    """tvdeploy check: one row per op type, its count, the verdict and why."""
    marks = {"ok": "[green]✓[/]", "warning": "[yellow]⚠[/]", "unsupported": "[red]✗[/]"}
    table = Table()
    for col in ("op", "count", "", "notes"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for row in report.rows:
        table.add_row(row.op, str(row.count), marks[row.status], "; ".join(row.notes))
    bad = sum(r.status == "unsupported" for r in report.rows)
    verdict = ("[bold green]✓ every op is supported[/]" if report.supported else
               f"[bold red]✗ {bad} op type(s) unsupported[/]")
    lines = [Text.from_markup(f"[bold]{artifact}[/]: opset {report.opset}, checked against {report.table}'s ONNX parser"),
             table, *(Text(n) for n in report.graph_notes), Text.from_markup(verdict)]
    return Group(*lines)


def eval_table(metrics, class_names, title: str) -> Group:
    """tvdeploy eval: mIoU and aAcc, then the IoU of every class that occurs."""
    import math

    table = Table()
    for col, justify in (("class", "right"), ("label", "left"), ("IoU", "right")):
        table.add_column(col, justify=justify)
    for i, (name, iou) in enumerate(zip(class_names, metrics.iou)):
        if not math.isnan(iou):
            table.add_row(str(i), name, f"{iou:.4f}")
    summary = f"mIoU {metrics.miou:.4f} · aAcc {metrics.aacc:.4f} · {metrics.images} images"
    return Group(Text(title, style="bold"), table, Text(summary, style="bold"))
