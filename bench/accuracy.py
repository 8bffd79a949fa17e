"""MemKD vs the identical network without memory (= Reverse Distillation) on generated data.

Figures, not a test (model/MEMKD.md §7): every synthetic category, several training seeds, the
same data and schedule for every variant; image AUROC, pixel AUROC and AUPRO (FPR <= 0.3) from
``memkd.evaluate``, mean and spread over seeds. Nothing is tuned on the test split: the schedule is
fixed up front and the same for all variants. Rows go to bench/results/accuracy.csv, the summary
to bench/results/accuracy.md (and stdout).

Variants: ``memkd`` (memory on, the defaults), ``rd`` (memory off); ablations ``memkd-t1``
(temperature 1.0), ``memkd-t0.03``, ``memkd-add`` (fusion by addition), ``memkd-nonel`` (no NEL
loss: w_nm = w_orth = 0).

    .venv/bin/python bench/accuracy.py                      # 4 categories x 3 seeds x memkd, rd
    .venv/bin/python bench/accuracy.py --quick              # 1 seed, short schedule
    .venv/bin/python bench/accuracy.py --variants memkd,rd,memkd-t1,memkd-add --categories grass
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from memkd.backbones import load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import SYNTH_CATEGORIES, read_mvtec_category, synth_dataset
from memkd.evaluate import evaluate
from memkd.train import fit

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
VARIANTS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    "memkd": ({"memory": True}, {}),
    "rd": ({"memory": False}, {}),
    "memkd-t1": ({"memory": True, "temperature": 1.0}, {}),
    "memkd-t0.03": ({"memory": True, "temperature": 0.03}, {}),
    "memkd-add": ({"memory": True, "fusion": "add"}, {}),
    "memkd-nonel": ({"memory": True}, {"w_nm": 0.0, "w_orth": 0.0}),
}


def _summary(rows: list[dict[str, object]], variants: list[str]) -> str:
    cats = sorted({str(r["category"]) for r in rows})
    lines = [
        "| category | variant | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---|---|",
    ]
    for cat in [*cats, "mean"]:
        for var in variants:
            sel = [
                r for r in rows if r["variant"] == var and (cat == "mean" or r["category"] == cat)
            ]
            if not sel:
                continue
            cells = []
            for m in METRICS:
                if cat == "mean":  # spread over seeds of the category-mean
                    seeds = sorted({r["seed"] for r in sel})
                    vals = [np.mean([float(r[m]) for r in sel if r["seed"] == s]) for s in seeds]
                else:
                    vals = [float(r[m]) for r in sel]
                cells.append(f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}")
            lines.append(f"| {cat} | {var} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 categories, 40 steps")
    parser.add_argument("--categories", default=",".join(SYNTH_CATEGORIES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="memkd,rd")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--width-mult", type=float, default=ModelConfig().width_mult)
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--data", type=Path, default=RESULTS / "synth-data")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tag", default="accuracy", help="output file stem")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.categories = "0", 40, "grass,coffee"
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    teacher = load_teacher("tf_efficientnet_lite0")
    rows: list[dict[str, object]] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for cat in args.categories.split(","):
        root = args.data / cat
        if not root.exists():  # data seed 0 always: every variant and seed sees the same images
            synth_dataset(args.data, [cat], seed=0, n_train=args.n_train)
        category = read_mvtec_category(root)
        for seed in (int(s) for s in args.seeds.split(",")):
            for var in variants:
                mover, tover = VARIANTS[var]
                mcfg = ModelConfig(input_size=args.size, width_mult=args.width_mult, **mover)
                tcfg = TrainConfig(steps=args.steps, seed=seed, **tover)
                start = time.perf_counter()
                model = fit(category.train, mcfg, tcfg, teacher).model
                fit_s = time.perf_counter() - start
                report = evaluate(model, teacher, category)
                row = {"category": cat, "variant": var, "seed": seed, "steps": args.steps,
                       "input_size": args.size, "width_mult": args.width_mult,
                       **{m: round(report.metrics[m], 4) for m in METRICS},
                       "fit_s": round(fit_s, 1)}  # fmt: skip
                rows.append(row)
                print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    with open(RESULTS / f"{args.tag}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = _summary(rows, variants)
    (RESULTS / f"{args.tag}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
