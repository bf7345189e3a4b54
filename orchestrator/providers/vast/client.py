"""A thin httpx client for the Vast.ai REST API, with the request shapes of the official ``vastai`` package.

It speaks JSON in and out and knows nothing of our policy; :mod:`orchestrator.providers.vast.provider` maps its
answers to typed objects. Transient failures (429, 5xx, connection errors) are retried with bounded exponential
backoff that honours ``Retry-After``. A create is retried only when the server cannot have acted on it (429, or no
connection made), because a blind retry could rent twice. The API key travels only in the ``Authorization`` header
of requests to the API's own host and never appears in logs, reprs or error messages.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from orchestrator.errors import (
    CreateFailedError,
    OfferGoneError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://console.vast.ai"
SEARCH_PATH = "/api/v0/bundles/"
LIST_PATH = "/api/v1/instances/"
# The current CLI asks for pages of 25 (the server's maximum) ordered by id, following ``next_token``.
LIST_PAGE_SIZE = 25
LIST_MAX_PAGES = 400
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# A longer Retry-After than this is not waited out inline; the caller gets RateLimitedError with the hint.
MAX_RETRY_AFTER_S = 60.0
# Log results are uploaded asynchronously to object storage; the official client polls for about 9 s.
LOG_POLL_ATTEMPTS = 30
LOG_POLL_INTERVAL_S = 0.3
MAX_LOG_BYTES = 4 * 1024**2
MAX_ERROR_DETAIL_CHARS = 300
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers that mean the offer is no longer rentable: the caller tries the next offer.
OFFER_GONE_ERRORS = frozenset({"no_such_ask", "ask_not_available", "no_such_offer"})
# Answers to a destroy that mean the instance is already gone, which is what we wanted.
ALREADY_GONE_ERRORS = frozenset({"no_such_instance", "no_such_contract", "instance_not_found", "not_found"})

JsonObject = dict[str, Any]
Sleep = Callable[[float], None]


class _RetryableError(Exception):
    """Internal: a response or transport failure worth another attempt."""

    def __init__(self, response: httpx.Response | None = None, cause: httpx.TransportError | None = None) -> None:
        super().__init__("retryable")
        self.response = response
        self.cause = cause


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (``Retry-After`` as seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """The ``error`` code and ``msg`` of a Vast error answer, either possibly empty."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:MAX_ERROR_DETAIL_CHARS]
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("error") or ""), str(body.get("msg") or body.get("message") or "")


class VastClient:
    """Calls to the Vast.ai API for one account. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_API_URL,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        timeout: httpx.Timeout | None = None,
        sleep: Sleep = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout or httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"VastClient(base_url={self.base_url!r})"

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    # -- operations ---------------------------------------------------------------------------------------------

    def search_offers(self, query: Mapping[str, Any]) -> list[JsonObject]:
        """``POST /api/v0/bundles/`` with the query as the body; the ``offers`` rows as the server sent them."""
        body = self._json(self._send("POST", SEARCH_PATH, json_body=dict(query)), "search offers")
        offers = body.get("offers")
        if not isinstance(offers, list):
            raise ProviderUnavailableError("Vast.ai search offers: the answer has no offers list")
        return [row for row in offers if isinstance(row, dict)]

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        env: Mapping[str, str],
        label: str,
        onstart: str | None = None,
        args: Sequence[str] = (),
        runtype: str = "args",
    ) -> int:
        """``PUT /api/v0/asks/{offer_id}/``: rent the offer and return the new instance (contract) id.

        ``cancel_unavail`` makes the server refuse rather than create a stopped instance when the machine cannot
        schedule the container right now. Raises OfferGoneError, CreateFailedError or another ProviderError.
        """
        body: JsonObject = {
            "client_id": "me",
            "image": image,
            "env": dict(env),
            "disk": disk_gb,
            "label": label,
            "onstart": onstart,
            "runtype": runtype,
            "cancel_unavail": True,
        }
        if args:
            body["args"] = list(args)
        path = f"/api/v0/asks/{int(offer_id)}/"
        try:
            response = self._send("PUT", path, json_body=body, idempotent=False, raise_for_status=False)
        except ProviderUnavailableError as exc:
            raise CreateFailedError(f"Vast.ai create on offer {offer_id}: {exc.message}") from exc
        contract = self._contract_id(response)
        if response.is_success and contract is not None:
            return contract
        error, msg = _error_fields(response)
        if contract is None and (error in OFFER_GONE_ERRORS or "no_such_ask" in msg):
            raise OfferGoneError(f"Vast.ai offer {offer_id} is no longer available ({error or msg})")
        if response.status_code in (401, 403):
            raise ProviderAuthError(f"Vast.ai refused the API key (HTTP {response.status_code})")
        instance = str(contract) if contract is not None else None
        raise CreateFailedError(
            f"Vast.ai create on offer {offer_id} failed: HTTP {response.status_code} {self._detail(error, msg)}",
            instance_id=instance,
        )

    def list_instances(self) -> list[JsonObject]:
        """Every instance of the account, all pages of ``GET /api/v1/instances/``; raises rather than return less."""
        params: dict[str, str | int] = {
            "select_filters": json.dumps({}),
            "order_by": json.dumps([{"col": "id", "dir": "asc"}]),
            "limit": LIST_PAGE_SIZE,
        }
        rows: list[JsonObject] = []
        seen_tokens: set[str] = set()
        for _ in range(LIST_MAX_PAGES):
            body = self._json(self._send("GET", LIST_PATH, params=params), "list instances")
            page = body.get("instances")
            if not isinstance(page, list):
                raise ProviderUnavailableError("Vast.ai list instances: the answer has no instances list")
            rows.extend(row for row in page if isinstance(row, dict))
            token = body.get("next_token")
            if not token:
                return rows
            if str(token) in seen_tokens:
                raise ProviderUnavailableError("Vast.ai list instances: paging repeated a token")
            seen_tokens.add(str(token))
            params["after_token"] = str(token)
        raise ProviderUnavailableError(f"Vast.ai list instances: more than {LIST_MAX_PAGES} pages")

    def show_instance(self, instance_id: int) -> JsonObject | None:
        """``GET /api/v0/instances/{id}/``: the row, or None when the server does not know it (any more)."""
        path = f"/api/v0/instances/{int(instance_id)}/"
        response = self._send("GET", path, params={"owner": "me"}, raise_for_status=False)
        if response.status_code == 404:
            return None
        self._raise_for_status(response, "GET", path)
        row = self._json(response, "show instance").get("instances")
        return row if isinstance(row, dict) else None

    def destroy_instance(self, instance_id: int) -> None:
        """``DELETE /api/v0/instances/{id}/``; an instance that is already gone counts as destroyed."""
        path = f"/api/v0/instances/{int(instance_id)}/"
        response = self._send("DELETE", path, json_body={}, raise_for_status=False)
        error, msg = _error_fields(response)
        if response.status_code == 404 or error in ALREADY_GONE_ERRORS:
            return
        self._raise_for_status(response, "DELETE", path)
        body = self._json(response, "destroy instance")
        if body.get("success") is False:
            raise ProviderError(f"Vast.ai destroy of instance {instance_id} refused: {self._detail(error, msg)}")

    def instance_logs(self, instance_id: int, tail: int = 1000) -> str:
        """The container log: ``PUT /api/v0/instances/request_logs/{id}/``, then fetch the ``result_url`` it names.

        The result lives on object storage, not the API host, so it is fetched without our credentials.
        """
        path = f"/api/v0/instances/request_logs/{int(instance_id)}/"
        # The official CLI sends tail as a string.
        body = self._json(self._send("PUT", path, json_body={"tail": str(int(tail))}), "request logs")
        url = body.get("result_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ProviderUnavailableError(f"Vast.ai request logs for instance {instance_id}: no result_url")
        for _ in range(LOG_POLL_ATTEMPTS):
            try:
                # A fresh request without the client's default headers: the Authorization header is never set on
                # the shared client, and this URL is another host anyway.
                response = self._http.get(url, headers={"Accept": "*/*"})
            except httpx.TransportError as exc:
                raise ProviderUnavailableError(f"Vast.ai logs of instance {instance_id}: {type(exc).__name__}") from exc
            if response.status_code == 200:
                return response.content[-MAX_LOG_BYTES:].decode("utf-8", errors="replace")
            self._sleep(LOG_POLL_INTERVAL_S)
        raise ProviderUnavailableError(f"Vast.ai logs of instance {instance_id} were not ready in time")

    # -- transport ----------------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: JsonObject | None = None,
        idempotent: bool = True,
        raise_for_status: bool = True,
    ) -> httpx.Response:
        """One API call with bounded retries; raises a ProviderError subclass for what retries could not fix."""

        def attempt() -> httpx.Response:
            try:
                response = self._http.request(
                    method, path, params=params, json=json_body, headers={"Authorization": f"Bearer {self._api_key}"}
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _RetryableError(cause=exc) from exc
            except httpx.TransportError as exc:
                # The request may have reached the server: only an idempotent call can be repeated safely.
                if idempotent:
                    raise _RetryableError(cause=exc) from exc
                raise ProviderUnavailableError(f"Vast.ai {method} {path}: {type(exc).__name__}") from exc
            if response.status_code == 429 or (idempotent and response.status_code in RETRYABLE_STATUS):
                hint = retry_after_s(response) if response.status_code == 429 else None
                if hint is not None and hint > self.max_retry_after_s:
                    raise RateLimitedError(
                        f"Vast.ai {method} {path}: rate limited for {hint:.0f} s", retry_after_s=hint
                    )
                raise _RetryableError(response=response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait_s,
            retry=retry_if_exception_type(_RetryableError),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(method, path, state),
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except _RetryableError as exc:
            raise self._exhausted(method, path, exc) from exc.cause
        if raise_for_status:
            self._raise_for_status(response, method, path)
        return response

    def _wait_s(self, state: RetryCallState) -> float:
        """Retry-After when the server gave one, else exponential backoff from ``backoff_base_s``."""
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (state.attempt_number - 1))
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _RetryableError) and error.response is not None:
            hint = retry_after_s(error.response)
            if hint is not None:
                return hint
        return backoff

    def _log_retry(self, method: str, path: str, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        what = "error"
        if isinstance(error, _RetryableError):
            what = f"HTTP {error.response.status_code}" if error.response is not None else type(error.cause).__name__
        log.warning("Vast.ai %s %s: %s, attempt %d of %d", method, path, what, state.attempt_number, self.max_attempts)

    def _exhausted(self, method: str, path: str, exc: _RetryableError) -> ProviderError:
        if exc.response is None:
            return ProviderUnavailableError(f"Vast.ai {method} {path}: {type(exc.cause).__name__} after retries")
        status = exc.response.status_code
        if status == 429:
            return RateLimitedError(
                f"Vast.ai {method} {path}: still rate limited after {self.max_attempts} attempts",
                retry_after_s=retry_after_s(exc.response),
            )
        error, msg = _error_fields(exc.response)
        return ProviderUnavailableError(f"Vast.ai {method} {path}: HTTP {status} {self._detail(error, msg)}")

    def _raise_for_status(self, response: httpx.Response, method: str, path: str) -> None:
        if response.is_success:
            return
        status = response.status_code
        if status in (401, 403):
            raise ProviderAuthError(f"Vast.ai refused the API key (HTTP {status}) on {method} {path}")
        error, msg = _error_fields(response)
        if status == 429:
            raise RateLimitedError(f"Vast.ai {method} {path}: rate limited", retry_after_s=retry_after_s(response))
        if status >= 500:
            raise ProviderUnavailableError(f"Vast.ai {method} {path}: HTTP {status} {self._detail(error, msg)}")
        raise ProviderError(f"Vast.ai {method} {path}: HTTP {status} {self._detail(error, msg)}")

    def _json(self, response: httpx.Response, what: str) -> JsonObject:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProviderUnavailableError(f"Vast.ai {what}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise ProviderUnavailableError(f"Vast.ai {what}: the answer is not a JSON object")
        return body

    @staticmethod
    def _contract_id(response: httpx.Response) -> int | None:
        try:
            body = response.json()
        except ValueError:
            return None
        value = body.get("new_contract") if isinstance(body, dict) else None
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def _detail(self, error: str, msg: str) -> str:
        """A short server-provided detail, with the key masked should the server ever echo it."""
        text = f"{error}: {msg}" if error and msg else error or msg
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:MAX_ERROR_DETAIL_CHARS]
