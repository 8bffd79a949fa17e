"""LineStore with Redis ACL credentials from the settings (a per-test user on the shared Redis).

The user may only touch this test's key prefix and channel, which is how an operator should
scope the service's Redis user; wrong credentials and missing permissions are one clear error.
"""

from __future__ import annotations

import uuid

import pytest

from memkd_stream.lines.errors import StoreUnavailable
from memkd_stream.lines.store import LineStore
from memkd_stream.settings import RedisSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_user(redis_client, redis_prefix):
    name = f"test-lines-{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    redis_client.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{redis_prefix}*"],
        channels=[f"{redis_prefix}*"],
        commands=["+@all"],
    )
    yield name, password
    redis_client.acl_deluser(name)


def _settings(redis_url: str, prefix: str, username: str, password: str) -> RedisSettings:
    return RedisSettings(
        url=redis_url, username=username, password=password, key_prefix=prefix, chunk_bytes=4096
    )


def test_a_scoped_acl_user_can_publish_and_fetch(acl_user, redis_url, redis_prefix, make_artifact):
    store = LineStore.from_settings(_settings(redis_url, redis_prefix, *acl_user))
    path = make_artifact(50_000)
    assert store.publish("A", path) == 1
    assert store.fetch_artifact("A", 1) == path.read_bytes()
    assert "secret" not in store.location and acl_user[1] not in store.location


def test_a_wrong_password_is_one_clear_error(acl_user, redis_url, redis_prefix):
    store = LineStore.from_settings(_settings(redis_url, redis_prefix, acl_user[0], "wrong"))
    with pytest.raises(StoreUnavailable) as err:
        store.lines()
    assert err.value.code == "redis-unavailable"
    assert "refused our credentials" in str(err.value)
    assert "MEMKD_REDIS__PASSWORD" in str(err.value)


def test_keys_outside_the_users_scope_are_refused(acl_user, redis_url, make_artifact):
    store = LineStore.from_settings(_settings(redis_url, "elsewhere:", *acl_user))
    with pytest.raises(StoreUnavailable, match=r"needs keys ~elsewhere:\* and channels"):
        store.publish("A", make_artifact())
