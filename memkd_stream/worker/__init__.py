"""``memkd-worker``: everything only the streaming worker runs (DESIGN.md §1, §4-§6).

Nothing is imported here: ``python -m memkd_stream.worker`` must install its signal handlers
before the heavy imports (torch, the teachers) start.
"""
