"""Does DRKD help a TinyViM student detector? The seeded ShapesDet experiment of ``shared/specs/drkd.md`` §7.5.

Per mode (``iid``, ``context``): train the teacher T (tinyvim-b-det) once, freeze it, then per seed train the
student (tinyvim-s-det) from the same initialisation and data order as
  S0     no distillation (the baseline),
  S_fit  FitNet-style FPN mimicry with the same adapters, λ matched to DRKD's total at step 0 (the control),
  S_drkd PR + IR + INS (DRKD),
and report COCO AP (pycocotools, area ranges scaled to the image size) on the held-out test split, the paired
differences S_drkd − S0 and S_drkd − S_fit per seed with a 95 % t-interval, the teacher–student gap, and the
student–teacher linear CKA of the FPN features. The decision rule is fixed before running: "DRKD helps" only
if the interval of S_drkd − S0 excludes 0. The KD weights are calibrated on seed 0 (§6.2) and frozen for the
other seeds.

    python benchmarks/drkd_shapes.py --time-only            # measure s/image-step first (20 steps each)
    python benchmarks/drkd_shapes.py --preset cpu           # 2 cores: 128², 3 seeds, S0/S_fit/S_drkd
    python benchmarks/drkd_shapes.py --preset gpu --device cuda   # lent GPU: 256², 5 seeds, ≤ 10 min

Results go to ``--out`` (JSON, rewritten atomically after every run, and an interrupted benchmark continues
where it stopped when started again with the same arguments). Never a timed test.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from tinyvim_deploy.fileio import write_json
from tinyvim_deploy.models import create_model, get_spec
from tinyvim_deploy.training.detect import DetectionTrainConfig, evaluate_detector, prepare_samples, train_detector
from tinyvim_deploy.training.shapesdet import make_detection_dataset

PRESETS = {
    # §7.5 budget arithmetic: teacher ≈ 6 k image-steps, each student ≈ 2 k (400 images × 5 epochs)
    "cpu": dict(size=128, train=400, val=200, test=200, teacher_epochs=15, student_epochs=5, seeds=3, batch=8),
    "gpu": dict(size=256, train=4000, val=800, test=800, teacher_epochs=30, student_epochs=12, seeds=5, batch=32),
    "smoke": dict(size=96, train=32, val=16, test=16, teacher_epochs=1, student_epochs=1, seeds=2, batch=8),
}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of paired differences."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = T_975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


@torch.no_grad()
def linear_cka(student, teacher, images: torch.Tensor) -> list[float]:
    """Linear CKA (Kornblith et al. 2019) between student and teacher FPN features, per level, over positions."""
    out = []
    for fs, ft in zip(student.eval().features(images), teacher.eval().features(images)):
        x = fs.permute(0, 2, 3, 1).reshape(-1, fs.shape[1]).double()
        y = ft.permute(0, 2, 3, 1).reshape(-1, ft.shape[1]).double()
        x, y = x - x.mean(0), y - y.mean(0)
        out.append(float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--modes", default="iid,context")
    ap.add_argument("--runs", default="S0,S_fit,S_drkd", help="which students (S0 is always needed for Δ)")
    ap.add_argument("--seeds", type=int, help="override the preset's seed count")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/drkd_shapes.json"))
    ap.add_argument("--time-only", action="store_true", help="time 20 steps of each run type and stop")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = dict(PRESETS[args.preset])
    if args.seeds:
        p["seeds"] = args.seeds
    spec = get_spec("tinyvim-s-det")
    size = p["size"]
    methods = {"S0": "none", "S_fit": "fitnet", "S_drkd": "drkd"}
    runs = [r.strip() for r in args.runs.split(",")]

    if args.time_only:
        data = make_detection_dataset(160, size=size, seed=0)
        samples = prepare_samples(data, size, spec.mean, spec.std)
        teacher = create_model("tinyvim-b-det")
        for name, method in (("tinyvim-b-det", "none"), ("tinyvim-s-det", "none"), ("tinyvim-s-det", "fitnet"),
                             ("tinyvim-s-det", "drkd")):
            config = DetectionTrainConfig(epochs=1, batch_size=8, method=method)
            start = time.perf_counter()
            train_detector(create_model(name), samples, config, teacher=teacher if method != "none" else None,
                           device=args.device)
            print(f"{name:14s} {method:7s} {(time.perf_counter() - start) / 160:.4f} s/image-step "
                  f"({size}², batch 8, {args.threads} threads)")
        return 0

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("setup", {"preset": args.preset, **p, "machine": platform.processor() or platform.machine(),
                                 "threads": args.threads, "device": args.device, "torch": torch.__version__})
    if results["setup"].get("preset") != args.preset:
        print(f"{args.out} holds a {results['setup']['preset']} run: pass another --out", file=sys.stderr)
        return 2
    runs_done = results.setdefault("runs", {})

    def save() -> None:
        write_json(args.out, results)

    for mode in [m.strip() for m in args.modes.split(",")]:
        sets = {split: make_detection_dataset(p[split], size=size, seed=0, mode=mode, split=split)
                for split in ("train", "val", "test")}
        samples = prepare_samples(sets["train"], size, spec.mean, spec.std)
        test_images = prepare_samples(sets["test"], size, spec.mean, spec.std).images[:64]

        def evaluate(model) -> dict:
            metrics = evaluate_detector(model, sets["test"], size, spec.mean, spec.std)
            return {**metrics.as_dict(), "val_ap": evaluate_detector(model, sets["val"], size, spec.mean, spec.std).ap}

        teacher_key = f"{mode}/T"
        teacher_path = args.out.parent / f"drkd_{args.preset}_{mode}_teacher.pth"
        teacher = create_model("tinyvim-b-det")
        if teacher_key in runs_done and teacher_path.exists():
            teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
        else:
            start = time.perf_counter()
            torch.manual_seed(1000)
            teacher = create_model("tinyvim-b-det")
            config = DetectionTrainConfig(epochs=p["teacher_epochs"], batch_size=p["batch"], seed=1000)
            train_detector(teacher, samples, config, device=args.device)
            teacher.cpu().eval()
            teacher_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), teacher_path)
            runs_done[teacher_key] = {**evaluate(teacher), "minutes": (time.perf_counter() - start) / 60}
            save()
        print(f"[{mode}] teacher AP {runs_done[teacher_key]['ap']:.4f}", flush=True)
        kd_weights: dict[str, list[float]] = results.setdefault("kd_weights", {}).setdefault(mode, {})
        for seed in range(p["seeds"]):
            for run in runs:
                key = f"{mode}/{run}/seed{seed}"
                if key in runs_done:
                    continue
                method = methods[run]
                torch.manual_seed(seed)  # the same student initialisation for every run of this seed
                student = create_model("tinyvim-s-det")
                config = DetectionTrainConfig(epochs=p["student_epochs"], batch_size=p["batch"], seed=seed,
                                              method=method, kd_weights=tuple(kd_weights[run]) if run in kd_weights
                                              else None)
                start = time.perf_counter()
                result = train_detector(student, samples, config, teacher=teacher if method != "none" else None,
                                        device=args.device)
                student = result.student.cpu().eval()
                if method != "none" and run not in kd_weights:  # §6.2: calibrated on seed 0, frozen afterwards
                    kd_weights[run] = list(result.kd_weights)
                runs_done[key] = {**evaluate(student), "cka": linear_cka(student, teacher.cpu(), test_images),
                                  "minutes": (time.perf_counter() - start) / 60,
                                  "final_losses": result.history[-1] if result.history else {}}
                save()
                print(f"[{mode}] {run} seed {seed}: AP {runs_done[key]['ap']:.4f} "
                      f"({runs_done[key]['minutes']:.1f} min)", flush=True)
        results.setdefault("summary", {})[mode] = summarise(runs_done, mode, runs, p["seeds"])
        save()
    print_report(results)
    return 0


def summarise(runs_done: dict, mode: str, runs: list[str], seeds: int) -> dict:
    teacher_ap = runs_done[f"{mode}/T"]["ap"]
    ap = {run: [runs_done[f"{mode}/{run}/seed{s}"]["ap"] for s in range(seeds)] for run in runs}
    summary = {"teacher_ap": teacher_ap, "ap": ap,
               "teacher_minus_S0": teacher_ap - statistics.fmean(ap["S0"]) if "S0" in ap else None}
    for other in ("S0", "S_fit"):
        if "S_drkd" in ap and other in ap:
            diffs = [a - b for a, b in zip(ap["S_drkd"], ap[other])]
            mean, lo, hi = t_interval(diffs)
            summary[f"S_drkd_minus_{other}"] = {"per_seed": diffs, "mean": mean, "ci95": [lo, hi],
                                                "excludes_0": bool(lo > 0 or hi < 0)}
    return summary


def print_report(results: dict) -> None:
    setup = results["setup"]
    print(f"\nShapesDet, {setup['size']}², preset {setup['preset']}, {setup['machine']} ({setup['threads']} threads),"
          f" torch {setup['torch']}; AP on the {setup['test']}-image test split (pycocotools)")
    for mode, s in results.get("summary", {}).items():
        print(f"\n[{mode}] teacher AP {s['teacher_ap']:.4f}")
        for run, values in s["ap"].items():
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"  {run:7s} " + "  ".join(f"{v:.4f}" for v in values) + f"   mean {statistics.fmean(values):.4f}"
                  f" ± {sd:.4f}")
        for key in ("S_drkd_minus_S0", "S_drkd_minus_S_fit"):
            if key in s:
                d = s[key]
                print(f"  Δ {key.replace('_minus_', ' − '):16s} mean {d['mean']:+.4f}, 95% CI "
                      f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] -> "
                      + ("excludes 0" if d["excludes_0"] else "includes 0: no evidence either way"))


if __name__ == "__main__":
    sys.exit(main())

