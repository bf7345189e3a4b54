"""A task that finishes after the worker reconnected to a restarted Redis acknowledges on a channel of the torn-down
connection. Plain Celery requests raise kombu's ``AttributeError`` there, which stops the worker's event loop; the
orchestrator's requests log it and go on, and the message stays unacknowledged in Redis for redelivery."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.worker.request import Request
from kombu import Connection, Queue  # type: ignore[attr-defined]
from kombu.message import Message

from orchestrator.settings import get_settings
from orchestrator.tasks.app import create_celery_app
from orchestrator.tasks.constants import TASK_REAP
from orchestrator.tasks.requests import BrokerRestartTolerantRequest

pytestmark = pytest.mark.integration


@pytest.fixture
def received_on_torn_down_connection(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Message]:
    """A real task message received with late acknowledgement, whose connection then went the way the Celery
    consumer leaves it after a broker restart: the transport's client dropped and the channel's pool gone."""
    monkeypatch.setenv("ORCH_BROKER_URL", redis_url)
    get_settings.cache_clear()
    app = create_celery_app()
    queue_name = f"stale-ack-{uuid.uuid4().hex[:8]}"
    queue = Queue(queue_name, routing_key=queue_name)  # type: ignore[no-untyped-call]
    with Connection(redis_url) as connection:  # type: ignore[no-untyped-call]
        queue(connection.channel()).declare()
        app.send_task(TASK_REAP, queue=queue_name, connection=connection)
        channel = connection.channel()
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.headers["task"] == TASK_REAP
        channel.connection.client = None
        channel._pool = None
        yield message
    get_settings.cache_clear()


def _finalized_app() -> Celery:
    app = create_celery_app()
    app.loader.import_default_modules()
    app.finalize()
    return app


def _request(cls: type[Request], message: Message) -> Request:
    task = _finalized_app().tasks[TASK_REAP]
    return cls(
        message,
        on_ack=message.ack_log_error,
        on_reject=message.reject_log_error,
        app=task.app,
        task=task,
        connection_errors=(ConnectionError,),
    )


def test_a_plain_celery_request_raises_on_the_torn_down_channel(received_on_torn_down_connection: Message) -> None:
    with pytest.raises(AttributeError):
        _request(Request, received_on_torn_down_connection).acknowledge()


def test_the_orchestrator_request_logs_the_lost_ack_and_leaves_the_message_for_redelivery(
    received_on_torn_down_connection: Message, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    request = _request(BrokerRestartTolerantRequest, received_on_torn_down_connection)
    with caplog.at_level(logging.CRITICAL, logger="orchestrator.tasks.requests"):
        request.acknowledge()
    assert request.acknowledged
    assert any("Couldn't ack" in record.getMessage() for record in caplog.records)
    client = redis.Redis.from_url(redis_url)
    try:
        # kombu's Redis transport restores what is in this hash once the visibility timeout has passed.
        assert client.hexists("unacked", received_on_torn_down_connection.delivery_tag)
    finally:
        client.close()


def test_the_orchestrator_request_rejects_on_the_torn_down_channel_without_raising(
    received_on_torn_down_connection: Message,
) -> None:
    request = _request(BrokerRestartTolerantRequest, received_on_torn_down_connection)
    request.reject(requeue=False)
    assert request.acknowledged


def test_every_orchestrator_task_uses_the_tolerant_request() -> None:
    ours = {name: task for name, task in _finalized_app().tasks.items() if name.startswith("orchestrator.")}
    assert len(ours) >= 8
    assert {task.Request for task in ours.values()} == {
        f"{BrokerRestartTolerantRequest.__module__}:{BrokerRestartTolerantRequest.__name__}"
    }
