"""``memkd-stream produce | results | topics``: talk to the inspection stream by hand.

``produce`` sends image files the way a camera does (DESIGN.md §3: key = line id, value = the
file's bytes, headers ``memkd-id`` / ``memkd-sent-at`` plus any ``--header K=V``); ``results``
shows what the workers published, as a table or JSON; ``topics create`` makes the three topics
with the size limit the worker is configured for (idempotent).

These are interactive commands: they wait ``--connect-timeout`` seconds (default 10) for the
broker, not the worker's long budgets, and say in one line when it does not answer or when a
topic is missing (a missing topic would otherwise look like an empty one, or hang ``produce``
for a minute while kafka-python waits for its metadata).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

from memkd_stream.broker.errors import connect_failure
from memkd_stream.broker.topics import broker_topics, require_topic
from memkd_stream.cli.main import Context, line_arg
from memkd_stream.contract.formats import IMAGE_SUFFIXES
from memkd_stream.contract.headers import HEADER_ID, HEADER_SENT_AT
from memkd_stream.errors import ErrorCode, ExitCode

__all__ = ["CONNECT_TIMEOUT_S", "collect_images", "plural", "register"]

# How long a command waits for the broker before saying it is unreachable. The clients'
# defaults (30 s bootstrap, 60 s producer metadata) suit the worker, not a person at a prompt.
CONNECT_TIMEOUT_S = 10.0


def plural(n: int, word: str) -> str:
    """``plural(1, "image")`` -> ``"1 image"``; ``plural(3, "image")`` -> ``"3 images"``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_PRODUCE_EXAMPLES = """\
examples:
  memkd-stream produce --line A data/synth/grass/test --id-from-filename
  memkd-stream produce --line A part-0042.png --header station=7
  memkd-stream produce --line A images/ --rate 5 --id-prefix run1/

the topic is kafka.inspect_topic (MEMKD_KAFKA__INSPECT_TOPIC); create it first with
`memkd-stream topics create`.
"""

_RESULTS_EXAMPLES = """\
examples:
  memkd-stream results                      what is on the results topic now
  memkd-stream results --line A --max 20
  memkd-stream results --follow             new results as they arrive (Ctrl-C stops)
  memkd-stream results --dlq --json         dead letters, for a script
"""

_TOPICS_EXAMPLES = """\
examples:
  memkd-stream topics create
  memkd-stream topics create --partitions 12
  MEMKD_KAFKA__INSPECT_TOPIC=test.inspect memkd-stream topics create

names: kafka.inspect_topic, kafka.results_topic, kafka.dlq_topic (MEMKD_KAFKA__*_TOPIC).
"""


def _add_connect_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for the broker before giving up (default {CONNECT_TIMEOUT_S:g})",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "produce",
        help="send images to the inspect topic as a camera would",
        description="Send image files (or every image under folders) to the inspect topic.",
        epilog=_PRODUCE_EXAMPLES,
    )
    p.add_argument("--line", type=line_arg, required=True, help="line id (the record key)")
    p.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--rate", type=float, default=None, metavar="N", help="images per second")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="extra header passed through to the result (repeatable)",
    )
    p.add_argument(
        "--id-from-filename",
        action="store_true",
        help="memkd-id = the path relative to the folder given (or the file name); "
        "default: the worker's topic:partition:offset",
    )
    p.add_argument("--id-prefix", default="", metavar="TEXT", help="prepended to each memkd-id")
    _add_connect_timeout(p)
    p.set_defaults(handler=_produce)

    p = subparsers.add_parser(
        "results",
        help="show scored results (id, line, version, score, verdict)",
        description="Read the results topic. Without --follow: what is there now, then exit.",
        epilog=_RESULTS_EXAMPLES,
    )
    p.add_argument("--line", type=line_arg, default=None, help="only this line")
    p.add_argument("--follow", action="store_true", help="keep printing new results")
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="with --follow: start at the oldest result instead of new ones",
    )
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after N results")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--dlq", action="store_true", help="read the dead-letter topic instead")
    _add_connect_timeout(p)
    p.set_defaults(handler=_results)

    p = subparsers.add_parser(
        "topics",
        help="create the inspect, results and dlq topics",
        description=(
            "Manage the three Kafka topics the workers use: inspect (camera images in), "
            "results (scores out) and dlq (records that could not be scored)."
        ),
        epilog=_TOPICS_EXAMPLES,
    )
    actions = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    c = actions.add_parser(
        "create",
        help="create missing topics (existing ones are kept)",
        description=(
            "Create the inspect, results and dlq topics when missing, with max.message.bytes = "
            "kafka.max_message_bytes (the image size limit). Existing topics are reported, "
            "never altered, so running it again is safe."
        ),
        epilog=_TOPICS_EXAMPLES,
    )
    c.add_argument(
        "--partitions",
        type=int,
        default=None,
        metavar="N",
        help="partitions of each new topic (default: kafka.partitions, MEMKD_KAFKA__PARTITIONS)",
    )
    _add_connect_timeout(c)
    c.set_defaults(handler=_topics_create)


# ------------------------------------------------------------------------------ produce
def collect_images(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, id) for every image: files as given, folders walked in sorted order; the id is
    the path relative to the folder argument (or the file's name)."""
    out: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                    out.append((file, file.relative_to(path).as_posix()))
        elif path.is_file():
            out.append((path, path.name))
        else:
            raise FileNotFoundError(2, "no such file or folder", str(path))
    return out


def _parse_headers(items: list[str]) -> list[tuple[str, bytes]]:
    headers = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--header {item!r}: expected K=V")
        headers.append((name, value.encode("utf-8")))
    return headers


def _produce(ctx: Context) -> int:
    from memkd_stream.broker.clients import make_producer, timeout_ms

    args = ctx.args
    kafka = ctx.settings.kafka
    images = collect_images(args.paths)
    if not images:
        ctx.out.error(
            ErrorCode.NO_IMAGES, "no image files (png, jpg, bmp, tif) under the paths given"
        )
        return ExitCode.FAILED
    try:
        extra = _parse_headers(args.header)
    except argparse.ArgumentTypeError as exc:
        ctx.out.error(ErrorCode.USAGE, str(exc))
        return ExitCode.USAGE
    timeout_s = float(args.connect_timeout)
    require_topic(kafka, kafka.inspect_topic, broker_topics(kafka, timeout_s), "inspect")
    ms = timeout_ms(timeout_s)
    try:
        producer = make_producer(kafka, bootstrap_timeout_ms=ms, max_block_ms=ms)
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc
    interval = 1.0 / args.rate if args.rate else 0.0
    started = time.monotonic()
    futures = []
    total_bytes = 0
    try:
        for i, (file, image_id) in enumerate(images):
            if interval:
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            value = file.read_bytes()
            total_bytes += len(value)
            headers = list(extra)
            if args.id_from_filename or args.id_prefix:
                headers.append((HEADER_ID, f"{args.id_prefix}{image_id}".encode()))
            headers.append((HEADER_SENT_AT, str(int(time.time() * 1000)).encode()))
            futures.append(
                producer.send(
                    kafka.inspect_topic, key=args.line.encode(), value=value, headers=headers
                )
            )
        producer.flush(timeout=float(kafka.request_timeout_ms) / 1000 + 5)
        for future in futures:
            future.get(timeout=1)  # raises if the broker refused a record
    except Exception as exc:
        failure = connect_failure(kafka.bootstrap_servers, timeout_s, exc)
        if failure is None:
            raise
        raise failure from exc
    finally:
        producer.close(timeout=5)
    elapsed = time.monotonic() - started
    summary = {
        "sent": len(futures),
        "line": args.line,
        "topic": kafka.inspect_topic,
        "bytes": total_bytes,
        "seconds": round(elapsed, 2),
    }
    ctx.out.result(
        summary,
        f"sent {plural(len(futures), 'image')} ({total_bytes} bytes) for line {args.line} to "
        f"{kafka.inspect_topic} in {elapsed:.1f}s",
    )
    return 0


# ------------------------------------------------------------------------------ results
def _row(doc: dict[str, Any]) -> list[str]:
    if "error" in doc:
        return [
            str(doc.get("id")),
            str(doc.get("line")),
            str(doc.get("error")),
            "-" if doc.get("replay_count") is None else str(doc["replay_count"]),
            str(doc.get("source")),
            str(doc.get("detail")),
        ]
    return [
        str(doc["id"]),
        str(doc["line"]),
        str(doc["model_version"]),
        f"{doc['score']:.4f}",
        f"{doc['threshold']:.4f}",
        "ANOMALOUS" if doc["anomalous"] else "ok",
    ]


_COLUMNS = ("id", "line", "version", "score", "threshold", "verdict")
# dead letters: what failed, how often `dlq replay` sent it back already, where it came from
_DLQ_COLUMNS = ("id", "line", "code", "replays", "source", "detail")


def _brief(doc: dict[str, Any]) -> dict[str, Any]:
    """The JSON form: the result without the (large) mask data."""
    brief = dict(doc)
    mask = brief.get("mask")
    if isinstance(mask, dict) and "data" in mask:
        brief["mask"] = {k: v for k, v in mask.items() if k != "data"}
        brief["mask"]["bytes"] = len(base64.b64decode(mask["data"]))
    return brief


def _results(ctx: Context) -> int:
    from memkd_stream.broker.results import read_results

    args = ctx.args
    kafka = ctx.settings.kafka
    topic = kafka.dlq_topic if args.dlq else kafka.results_topic
    what = "dead letters" if args.dlq else "results"
    out = ctx.out
    timeout_s = float(args.connect_timeout)
    require_topic(kafka, topic, broker_topics(kafka, timeout_s), what)
    if args.follow:
        if out.json_mode:

            def show(doc: dict[str, Any]) -> None:
                print(json.dumps(_brief(doc)), flush=True)
        else:
            columns = _DLQ_COLUMNS if args.dlq else _COLUMNS
            print("  ".join(f"{c:<12}" for c in columns), flush=True)

            def show(doc: dict[str, Any]) -> None:
                print("  ".join(f"{c:<12}" for c in _row(doc)), flush=True)

        try:
            read_results(
                kafka,
                topic=topic,
                follow=True,
                from_beginning=args.from_beginning,
                line=args.line,
                max_records=args.max,
                timeout_s=args.timeout,
                on_record=show,
                connect_timeout_s=timeout_s,
            )
        except KeyboardInterrupt:
            return 0
        return 0
    docs = read_results(
        kafka,
        topic=topic,
        follow=False,
        from_beginning=True,
        line=args.line,
        max_records=args.max,
        timeout_s=args.timeout,
        require_topic=True,
        connect_timeout_s=timeout_s,
    )

    def human(console: Any) -> None:
        from rich.table import Table

        columns = _DLQ_COLUMNS if args.dlq else _COLUMNS
        table = Table(*columns, title=f"{plural(len(docs), 'record')} on {topic}")
        for doc in docs:
            table.add_row(*_row(doc))
        console.print(table)

    out.result([_brief(d) for d in docs], human)
    return 0


# ------------------------------------------------------------------------------ topics
def _topics_create(ctx: Context) -> int:
    from memkd_stream.broker.topics import ensure_topics

    kafka = ctx.settings.kafka
    # ensure_topics' admin client waits the full bootstrap budget; ask quickly first.
    broker_topics(kafka, float(ctx.args.connect_timeout))
    statuses = ensure_topics(kafka, partitions=ctx.args.partitions)
    data = [{"topic": s.name, "partitions": s.partitions, "created": s.created} for s in statuses]
    lines = [
        f"{s.name}: {'created' if s.created else 'exists'} ({s.partitions} partitions)"
        for s in statuses
    ]
    ctx.out.result(data, "\n".join(lines))
    return 0
