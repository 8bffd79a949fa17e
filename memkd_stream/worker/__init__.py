"""``memkd-worker``: Kafka in, line models, results out, at least once (DESIGN.md §1, §4-§6).

Everything here runs only in the worker: ``__main__`` is the process; ``app.Worker`` is a thin
facade that wires the parts together, runs the consumer loop, and drains or aborts at the end.
Threads and who owns what:

- **consumer thread** (``consumer_loop.ConsumerLoop``): the only user of the ``KafkaConsumer``.
  Polls, parses each record (``contract.request.parse_request``), registers it with the
  ``OffsetTracker`` (``offsets``), hands it to the decode pool, pauses/resumes partitions
  (``flow_control``: backpressure, unavailable lines), commits the acked prefix every
  ``COMMIT_INTERVAL_S`` (``commits``) and probes the broker.
- **decode pool**, **inference thread**, **publisher thread** (``pipeline.Pipeline``): resolve
  the line's model (``engine``) and decode (``decode``); batch (``batcher``) and run one batch
  at a time on the device; encode and produce (``sink``). A tiled line's frame fans out into its
  tiles and back into one result (``tiles``).
- **producer IO thread** (kafka-python): delivery callbacks ``ack`` the tracker (``sink``).
- **consumer IO thread** (kafka-python 3): the rebalance callbacks (``rebalance``), run while
  the consumer thread is blocked in ``poll()``.
- **hot-swap thread** (``hot_swap``): follows activations in Redis; **health server**
  (``health``): ``/metrics`` (``metrics``), ``/healthz``, ``/readyz``.

Every part gets the same ``context.WorkerContext`` (settings, metrics, tracker, run state,
heartbeats, log). Nothing downstream of the consumer needs the consumer thread, so in-flight
work keeps finishing while ``poll()`` is blocked in a rebalance callback. That is what lets
``on_partitions_revoked`` wait (up to ``worker.rebalance_budget_s``) for the revoked
partitions' results to be acknowledged and commit them before ownership moves.

Failure paths, each named: ``BadRequest`` / ``DecodeFailed`` / ``UnknownLine`` -> dead letter
with its code; ``LineUnavailable`` -> the record is parked and its partition paused, retried
every ``flow_control._PARK_RETRY_S``, dead-lettered ``line-unavailable`` after
``worker.line_unavailable_pause_s``; a model exception -> ``model-error`` for that batch; a
result the broker will not take within ``kafka.unreachable_timeout_s``, or a broker unreachable
that long -> exit code 3, never committing undelivered work; SIGTERM -> drain and exit 0 within
``worker.drain_grace_s``. Exit codes are ``memkd_stream.errors.ExitCode``.

Nothing is imported here: ``python -m memkd_stream.worker`` installs its signal handlers before
the heavy imports (torch, the teachers) start.
"""
