"""A query text's CLIP text embedding, computed by a worker: the tenant's ready rented instance, a configured local
GPU worker, or the inference stack in this process, in the tenant's tier order.

The embedding must come from the model that embedded the pictures (``model_id``); a worker with another CLIP is
passed over. Answers are kept in a small per-process LRU keyed by (model, text), so a repeated query costs nothing.
When no worker can answer, TextEncoderUnavailableError says what each one said.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from pydantic import ValidationError
from sqlalchemy.orm import Session

from gpu_worker.text_embedding import EMBED_TEXT_PATH, MAX_TEXT_CHARS, TextEmbeddings
from orchestrator.errors import BackendUnavailableError
from orchestrator.scheduler.model import Tier
from orchestrator.settings import Settings, get_settings
from orchestrator.similarity.errors import ModelMismatchError, TextEncoderUnavailableError

CACHE_ENTRIES = 512
# A text embedding takes milliseconds on a loaded worker; a slow answer means a busy or broken one.
HTTP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 1024**2


class TextSource(Protocol):
    """Something that can embed texts with a CLIP text tower."""

    name: str

    def embed(self, texts: Sequence[str], model_id: str) -> TextEmbeddings:
        """Embeddings of ``texts``; BackendUnavailableError when this source cannot answer now."""
        ...


@dataclass
class HttpTextSource:
    """A ``gpu-worker serve`` reached over HTTP(S) with its token (a local worker, or a rented instance)."""

    name: str
    url: str
    token: str
    timeout_s: float = HTTP_TIMEOUT_S
    verify: ssl.SSLContext | bool = True

    def embed(self, texts: Sequence[str], model_id: str) -> TextEmbeddings:
        """POST the texts to the worker's ``/v1/embed/text`` and validate its answer (the worker picks its model)."""
        timeout = httpx.Timeout(self.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.timeout_s))
        try:
            with (
                httpx.Client(timeout=timeout, follow_redirects=False, verify=self.verify) as client,
                client.stream(
                    "POST",
                    f"{self.url.rstrip('/')}{EMBED_TEXT_PATH}",
                    json={"texts": list(texts)},
                    headers={"Authorization": f"Bearer {self.token}"},
                ) as response,
            ):
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_ANSWER_BYTES:
                        raise BackendUnavailableError(f"{self.name} sent more than {MAX_ANSWER_BYTES} bytes")
                if response.status_code != 200:
                    snippet = bytes(body[:300]).decode("utf-8", "replace")
                    raise BackendUnavailableError(f"{self.name} answered HTTP {response.status_code}: {snippet}")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise BackendUnavailableError(f"{self.name} is unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            answer = TextEmbeddings.model_validate_json(bytes(body))
        except ValidationError as exc:
            raise BackendUnavailableError(f"{self.name} sent a malformed answer: {exc.errors()[:3]}") from exc
        if len(answer.embeddings) != len(texts):
            raise BackendUnavailableError(f"{self.name} answered {len(answer.embeddings)} embeddings for {len(texts)}")
        return answer


class InProcessTextSource:
    """The inference stack of this process (shared with the in-process batch backend, models kept warm)."""

    name = "the in-process worker"

    def embed(self, texts: Sequence[str], model_id: str) -> TextEmbeddings:
        """Load (once) the CLIP model ``model_id`` here and embed the texts with it."""
        from gpu_worker.errors import WorkerError
        from orchestrator.backends.in_process import _get_executor

        try:
            answer: TextEmbeddings = _get_executor().embed_texts(list(texts), model_id)
        except WorkerError as exc:
            raise BackendUnavailableError(f"{self.name}: {exc.summary}") from exc
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendUnavailableError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        return answer


def sources_for(session: Session, *, tenant_id: uuid.UUID, settings: Settings | None = None) -> list[TextSource]:
    """The workers that may embed a text for the tenant, in its tier order: its ready rented instances, the
    configured local workers, then this process when the tenant allows the CPU tier."""
    from orchestrator.budgets import get_policy
    from orchestrator.cloud.instances import ready_instances
    from orchestrator.cloud.tls import pinned_ssl_context

    settings = settings or get_settings()
    sources: list[TextSource] = []
    for tier in dict.fromkeys(get_policy(session, tenant_id=tenant_id).tiers):
        if tier is Tier.CLOUD:
            for instance in ready_instances(session, tenant_id=tenant_id):
                if instance.worker_url:
                    sources.append(
                        HttpTextSource(
                            name=f"cloud instance {instance.id}",
                            url=instance.worker_url,
                            token=instance.worker_token,
                            timeout_s=min(HTTP_TIMEOUT_S, settings.cloud_worker_timeout_s),
                            verify=pinned_ssl_context(instance.tls_cert_pem),
                        )
                    )
        elif tier is Tier.LOCAL:
            sources.extend(
                HttpTextSource(
                    name=f"local worker {url}",
                    url=url,
                    token=settings.local_worker_token,
                    timeout_s=min(HTTP_TIMEOUT_S, settings.local_worker_timeout_s),
                )
                for url in settings.all_local_worker_urls
            )
        elif tier is Tier.CPU:
            sources.append(InProcessTextSource())
    return sources


class TextEncoder:
    """Embeds query texts through the first source that answers with the wanted model; remembers recent answers."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every cached embedding."""
        with self._lock:
            self._cache.clear()

    def encode(self, text: str, *, model_id: str, sources: Sequence[TextSource]) -> list[float]:
        """The text's embedding from ``model_id``.

        ValueError for a blank or too long text; ModelMismatchError when the workers that answered all have another
        model; TextEncoderUnavailableError when none could answer.
        """
        query = " ".join(text.split())
        if not query:
            raise ValueError("the search text is empty")
        if len(query) > MAX_TEXT_CHARS:
            raise ValueError(f"the search text has {len(query)} characters; at most {MAX_TEXT_CHARS}")
        key = (model_id, query)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        problems: list[str] = []
        other_models: list[str] = []
        for source in sources:
            try:
                answer = source.embed([query], model_id)
            except BackendUnavailableError as exc:
                problems.append(exc.message)
                continue
            if answer.model_id != model_id:
                other_models.append(f"{source.name} has {answer.model_id!r}")
                continue
            vector = answer.embeddings[0]
            with self._lock:
                self._cache[key] = vector
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
            return vector
        if other_models:
            raise ModelMismatchError(
                f"the pictures were embedded with {model_id!r}, but {'; '.join(other_models)}; "
                "serve that CLIP model on a worker to search them by text"
            )
        detail = "; ".join(problems) if problems else "no worker is configured and this tenant does not allow the CPU"
        raise TextEncoderUnavailableError(f"no worker can embed text now; try again later ({detail[:1500]})")


text_encoder = TextEncoder()
