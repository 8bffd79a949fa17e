"""The summary ``make demo`` prints: streamed results joined with the dataset's ground truth.

Reads the results (and dead-letter) topic without a consumer group until every image the demo
sent is answered, then prints per image its id, score, verdict and truth, the image AUROC of the
*streamed* scores (what the worker computed, not a re-run of the model), and writes heatmap
overlays (image | mask over image | ground truth) for a few images. The truth comes from the
MVTec layout the images were sent from: ``test/good/...`` is normal, ``test/<defect>/...`` not.

Run: ``python deploy/local/demo_report.py --data DIR --expect N --id-prefix P --out DIR``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["main"]


def _truth(image_id: str, prefix: str) -> tuple[str, int]:
    rel = image_id[len(prefix) :] if image_id.startswith(prefix) else image_id
    defect = rel.split("/", 1)[0]
    return rel, 0 if defect == "good" else 1


def _collect(settings: Any, expect: int, prefix: str, timeout_s: float) -> tuple[list, list]:
    from memkd_stream.broker.results import read_results

    kafka = settings.kafka
    deadline = time.monotonic() + timeout_s
    results: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    while True:
        results = [
            r
            for r in read_results(
                kafka, topic=kafka.results_topic, follow=False, from_beginning=True
            )
            if str(r.get("id", "")).startswith(prefix)
        ]
        dead = [
            d
            for d in read_results(kafka, topic=kafka.dlq_topic, follow=False, from_beginning=True)
            if str(d.get("id", "")).startswith(prefix)
        ]
        answered = {r["id"] for r in results} | {d["id"] for d in dead}
        if len(answered) >= expect or time.monotonic() >= deadline:
            return results, dead
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/local/demo_report.py")
    parser.add_argument("--data", type=Path, required=True, help="the MVTec-layout category")
    parser.add_argument("--expect", type=int, required=True, help="images sent")
    parser.add_argument("--id-prefix", default="", help="memkd-id prefix of this run")
    parser.add_argument("--out", type=Path, required=True, help="where overlays and JSON go")
    parser.add_argument("--overlays", type=int, default=6, help="how many overlays to write")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    args = parser.parse_args(argv)

    from memkd.metrics import image_auroc

    from memkd_stream.settings import load_settings

    settings = load_settings()
    results, dead = _collect(settings, args.expect, args.id_prefix, args.timeout)
    rows = []
    for r in results:
        rel, label = _truth(r["id"], args.id_prefix)
        rows.append({**r, "rel": rel, "label": label})
    rows.sort(key=lambda r: r["rel"])

    print(f"\n{'image':<28} {'version':<8} {'score':>8} {'thresh':>8}  {'verdict':<10} truth")
    for r in rows:
        verdict = "ANOMALOUS" if r["anomalous"] else "ok"
        truth = "defect" if r["label"] else "good"
        mark = "" if bool(r["anomalous"]) == bool(r["label"]) else "  <- miss"
        print(
            f"{r['rel']:<28} {r['model_version']:<8} {r['score']:8.4f} {r['threshold']:8.4f}  "
            f"{verdict:<10} {truth}{mark}"
        )
    for d in dead:
        print(f"{d['id']:<28} dead-lettered: {d['error']} ({d['detail']})")

    labels = [r["label"] for r in rows]
    scores = [r["score"] for r in rows]
    auroc = float(image_auroc(labels, scores)) if 0 < sum(labels) < len(labels) else float("nan")
    correct = sum(bool(r["anomalous"]) == bool(r["label"]) for r in rows)
    latency = sorted(r["timing_ms"]["total"] for r in rows)
    p50 = latency[len(latency) // 2] if latency else float("nan")
    print(
        f"\n{len(rows)} results, {len(dead)} dead letters for {args.expect} images sent; "
        f"verdicts right {correct}/{len(rows)}; image AUROC (streamed scores) {auroc:.3f}; "
        f"worker latency p50 {p50:.0f} ms"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    overlays_dir = args.out / "overlays"
    overlays_dir.mkdir(exist_ok=True)
    for stale in overlays_dir.glob("*.png"):  # overlays of an earlier run
        stale.unlink()
    picks = sorted(rows, key=lambda r: -r["score"])[: max(0, args.overlays - 1)]
    goods = [r for r in rows if r["label"] == 0 and r not in picks]
    if goods:
        picks.append(goods[0])
    for r in picks:
        _write_overlay(args.data / "test", args.data / "ground_truth", r, overlays_dir)
    summary = {
        "sent": args.expect,
        "results": len(rows),
        "dead_letters": len(dead),
        "image_auroc": auroc,
        "verdicts_right": correct,
        "images": [
            {
                k: r[k]
                for k in ("rel", "id", "model_version", "score", "threshold", "anomalous", "label")
            }
            for r in rows
        ],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"overlays: {overlays_dir} ({len(picks)} images); summary: {args.out / 'summary.json'}")
    complete = len(rows) + len(dead) >= args.expect
    if not complete:
        print(
            f"demo: only {len(rows) + len(dead)} of {args.expect} images answered", file=sys.stderr
        )
    return 0 if complete else 1


def _write_overlay(test_dir: Path, truth_dir: Path, row: dict[str, Any], out: Path) -> None:
    """[image | streamed mask over it | ground truth], drawn by ``eval``'s figure code: the wire
    mask is the map in units of 2 x threshold (DESIGN.md §3), so map = mask / 255 and the
    threshold is 0.5."""
    from memkd_stream.cli.figures import overlay_panel

    source = test_dir / row["rel"]
    if not source.is_file():
        return
    mask_png = Image.open(io.BytesIO(base64.b64decode(row["mask"]["data"]))).convert("L")
    heat = np.asarray(mask_png, dtype=np.float32) / 255.0
    truth = None
    gt = truth_dir / Path(row["rel"]).parent / f"{Path(row['rel']).stem}_mask.png"
    if gt.is_file():
        truth = np.asarray(Image.open(gt).convert("L").resize(mask_png.size, Image.NEAREST)) > 0
    verdict = "anomalous" if row["anomalous"] else "ok"
    caption = [
        f"{row['rel']}  truth: {'defect' if row['label'] else 'good'}",
        f"score {row['score']:.4g}  threshold {row['threshold']:.4g}  {verdict.upper()}",
    ]
    panel = overlay_panel(Image.open(source), heat, 0.5, caption, mask=truth)
    name = row["rel"].replace("/", "_").rsplit(".", 1)[0]
    panel.save(out / f"{name}_{verdict}_{row['score']:.3f}.png")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
