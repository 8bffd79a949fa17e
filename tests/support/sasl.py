"""The broker's SASL_SSL listener as tests log in to it (the ``kafka_sasl`` fixture builds one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from deploy.local import services as local_services
from memkd_stream.settings import KafkaSettings


@dataclass(frozen=True)
class SaslListener:
    """The broker's SASL_SSL listener (SCRAM-SHA-512 over TLS) and how to log in to it."""

    bootstrap: str
    cafile: Path
    username: str
    password: str
    mechanism: str = local_services.SASL_MECHANISM

    def settings(self, **changes: Any) -> KafkaSettings:
        """Kafka settings that log in as this user; ``changes`` replace fields (a wrong
        ``sasl_password``, another ``ssl_cafile``...)."""
        fields: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": self.mechanism,
            "sasl_username": self.username,
            "sasl_password": SecretStr(self.password),
            "ssl_cafile": self.cafile,
        }
        fields.update(changes)
        return KafkaSettings(**fields)
