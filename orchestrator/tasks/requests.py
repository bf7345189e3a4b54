"""The task class of every orchestrator task, whose requests survive acknowledging on a broker connection that a
broker restart has already torn down.

When Redis restarts while a late-acknowledged task runs, the Celery consumer reconnects on a new connection and
drops the old one's client. The task's message still belongs to a channel of the old connection, and kombu's Redis
transport then fails the acknowledgement with an ``AttributeError`` instead of a connection error. Celery runs that
acknowledgement in the worker's event loop, which treats anything but a connection error as fatal, so the whole
worker stopped taking work. The acknowledgement cannot be delivered either way: the message stays in the broker's
unacknowledged set and comes back after the visibility timeout, which every orchestrator task tolerates because a
batch's lease, not the broker, decides who works on it. So these requests log the lost acknowledgement and go on.
"""

from __future__ import annotations

import logging

from celery import Task
from celery.worker.request import Request

log = logging.getLogger(__name__)

# What kombu's Redis transport raises when a channel of a torn-down connection acknowledges or rejects a message.
STALE_CHANNEL_ERRORS: tuple[type[BaseException], ...] = (AttributeError,)


class BrokerRestartTolerantRequest(Request):  # type: ignore[misc]
    """A Celery request whose acknowledgement or rejection on a torn-down broker connection is logged, not fatal."""

    acknowledged: bool

    def acknowledge(self) -> None:
        """Acknowledge the message; a failure from a stale channel is logged by kombu and the worker goes on."""
        if not self.acknowledged:
            self._on_ack(log, (*self._connection_errors, *STALE_CHANNEL_ERRORS))
            self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        """Reject the message; a failure from a stale channel is logged by kombu and the worker goes on."""
        if not self.acknowledged:
            self._on_reject(log, (*self._connection_errors, *STALE_CHANNEL_ERRORS), requeue)
            self.acknowledged = True
            self.send_event("task-rejected", requeue=requeue)


class OrchestratorTask(Task):  # type: ignore[misc]
    """The base of every orchestrator task: its requests are :class:`BrokerRestartTolerantRequest`."""

    Request = f"{__name__}:BrokerRestartTolerantRequest"
