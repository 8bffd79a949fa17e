"""The public contract of memkd-stream (DESIGN.md §3): line ids, the wire format of requests,
results and dead letters, header names and dead-letter codes. Pure: no I/O, and nothing of ours
but ``memkd_stream.errors`` is imported here."""
