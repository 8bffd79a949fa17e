"""Topic checks of ``broker.topics`` that need no broker: the missing-topic message."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from memkd_stream.broker.errors import TopicMissing
from memkd_stream.broker.topics import require_topic


def test_missing_topic_message_names_the_topic_and_the_fix() -> None:
    kafka = SimpleNamespace(bootstrap_servers="k:9092")
    with pytest.raises(TopicMissing) as exc:
        require_topic(kafka, "memkd.results", {"memkd.inspect"}, "results")
    assert exc.value.code == "topic-missing"
    assert str(exc.value) == (
        "topic memkd.results (results) does not exist on k:9092; "
        "create it with: memkd-stream topics create"
    )
    require_topic(kafka, "memkd.inspect", {"memkd.inspect"})  # present: no error
