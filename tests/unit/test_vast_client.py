"""The Vast.ai client and provider against the fake Vast API, through an in-memory transport (no network)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from orchestrator.errors import (
    CreateFailedError,
    NotYetTerminatedError,
    OfferGoneError,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitedError,
)
from orchestrator.providers.base import InstanceState, LaunchSpec, OfferFilters
from orchestrator.providers.vast.client import MAX_ATTEMPTS, VastClient
from orchestrator.providers.vast.provider import VastProvider, make_label, offer_query
from orchestrator.settings import Settings
from tests.fakes.vast_server import FakeVast, InstanceFault


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeVast:
    vast = FakeVast(clock=clock, boot_s=30.0, balance_usd=50.0)
    vast.add_offer(201, machine_id=21, gpu_name="RTX 4090", dph_base=0.30)
    vast.add_offer(202, machine_id=22, gpu_name="RTX 5090", dph_base=0.55, cuda_max_good=12.8)
    vast.add_offer(203, machine_id=23, gpu_name="RTX 5090", dph_base=0.50, cuda_max_good=12.4)
    vast.add_offer(204, machine_id=24, gpu_name="RTX 3090", dph_base=0.10)
    return vast


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeVast, sleeps: list[float]) -> Iterator[VastClient]:
    with VastClient(fake.api_key, fake.url, sleep=sleeps.append, transport=fake.transport()) as vast_client:
        yield vast_client


@pytest.fixture
def provider(client: VastClient) -> VastProvider:
    return VastProvider(client)


SPEC = LaunchSpec(
    image="ghcr.io/example/gpu-worker:1.0",
    label=make_label("test", "row1"),
    disk_gb=40,
    env={"GPUW_TOKEN": "per-instance-token"},
    ports=(8000,),
)
FILTERS = OfferFilters(gpu_names=("RTX 5090", "RTX 4090"), min_cuda=12.8, min_reliability=0.98, disk_gb=40)


def test_search_applies_tenant_filters_and_parses_string_numbers(provider: VastProvider) -> None:
    offers = provider.search_offers(FILTERS)

    # 203 has too old a CUDA for Blackwell images, 204 is not an allowed GPU; cheapest first.
    assert [o.id for o in offers] == ["201", "202"]
    assert offers[0].machine_id == 21 and offers[0].cuda_max_good == pytest.approx(12.8)
    # dph_total includes the 40 GB of storage the query priced (0.15 USD/GB-month over 720 h).
    assert offers[0].dph_total == pytest.approx(0.30 + 0.15 * 40 / 720, abs=1e-5)
    assert offers[0].verified and offers[0].inet_down_mbps == pytest.approx(900.0)


def test_search_excludes_machines_that_failed_before_and_respects_max_price(provider: VastProvider) -> None:
    filters = OfferFilters(gpu_names=("RTX 5090", "RTX 4090"), excluded_machine_ids=frozenset({21}), max_dph_total=0.6)

    assert [o.machine_id for o in provider.search_offers(filters)] == [23, 22]  # cheapest first


def test_offer_query_speaks_the_official_query_language() -> None:
    query = offer_query(FILTERS)

    assert query["gpu_name"] == {"in": ["RTX 5090", "RTX 4090"]}
    assert query["cuda_max_good"] == {"gte": 12.8}
    assert query["verified"] == {"eq": True} and query["rentable"] == {"eq": True}
    assert query["type"] == "on-demand" and query["allocated_storage"] == 40


def test_launch_creates_an_instance_that_boots_and_bills_per_second(
    provider: VastProvider, fake: FakeVast, clock: FakeClock
) -> None:
    launched = provider.launch("201", SPEC)
    create = fake.requests_to("PUT", "/api/v0/asks/201/")[-1]

    assert create.body["cancel_unavail"] is True and create.body["client_id"] == "me"
    assert create.body["env"] == {"GPUW_TOKEN": "per-instance-token", "-p 8000:8000": "1"}
    assert launched.state is InstanceState.LOADING
    loading = provider.get(launched.id)
    assert loading is not None and loading.state is InstanceState.LOADING and loading.label == SPEC.label

    clock.advance(31)
    running = provider.get(launched.id)
    assert running is not None and running.state is InstanceState.RUNNING
    assert running.public_ip == "127.0.0.1"  # the API's trailing newline is stripped
    assert 8000 in running.ports and running.machine_id == 21
    assert running.extra_env == {"GPUW_TOKEN": "per-instance-token"}
    assert running.start_date is not None

    clock.advance(3600 - 31)
    provider.destroy(launched.id)
    clock.advance(100)
    assert fake.spent_usd == pytest.approx(running.dph_total, abs=1e-5)  # rows round to 6 places


def test_offer_taken_between_search_and_create_means_try_the_next_offer(provider: VastProvider, fake: FakeVast) -> None:
    fake.take_offers_on_create(1)

    with pytest.raises(OfferGoneError):
        provider.launch("201", SPEC)
    assert fake.live_instances() == []
    assert provider.launch("202", SPEC).id


def test_create_that_fails_after_making_a_contract_is_destroyed_at_once(provider: VastProvider, fake: FakeVast) -> None:
    fake.fail_creates_after_contract(1)

    with pytest.raises(CreateFailedError) as failure:
        provider.launch("201", SPEC)
    assert failure.value.instance_id is not None
    assert fake.live_instances() == []


def test_create_is_not_repeated_on_a_server_error(client: VastClient, fake: FakeVast) -> None:
    fake.fail_creates_after_contract(1)

    with pytest.raises(CreateFailedError):
        client.create_instance(201, image="img", disk_gb=10, env={}, label="mam-x")
    assert len(fake.requests_to("PUT", "/api/v0/asks/")) == 1


def test_429_storm_is_retried_honouring_retry_after(
    provider: VastProvider, fake: FakeVast, sleeps: list[float]
) -> None:
    fake.rate_limit(3, retry_after_s=2.5)

    assert provider.list_instances() == []
    assert sleeps == [2.5, 2.5, 2.5]


def test_retries_are_bounded_and_end_in_a_typed_error(client: VastClient, fake: FakeVast, sleeps: list[float]) -> None:
    fake.rate_limit(100, retry_after_s=1)

    with pytest.raises(RateLimitedError) as limited:
        client.list_instances()
    assert limited.value.retry_after_s == pytest.approx(1.0)
    assert len(sleeps) == MAX_ATTEMPTS - 1


def test_a_retry_after_longer_than_the_cap_is_handed_to_the_caller(client: VastClient, fake: FakeVast) -> None:
    fake.rate_limit(1, retry_after_s=600)

    with pytest.raises(RateLimitedError) as limited:
        client.search_offers({})
    assert limited.value.retry_after_s == pytest.approx(600)


def test_5xx_backs_off_exponentially_without_retry_after(
    provider: VastProvider, fake: FakeVast, sleeps: list[float]
) -> None:
    fake.fail_lists(2)

    assert provider.list_instances() == []
    assert sleeps == [0.5, 1.0]


def test_a_failed_list_raises_and_is_never_read_as_no_instances(provider: VastProvider, fake: FakeVast) -> None:
    provider.launch("201", SPEC)
    fake.fail_lists(MAX_ATTEMPTS)

    with pytest.raises(ProviderUnavailableError):
        provider.list_instances()
    assert len(provider.list_instances()) == 1


def test_list_follows_pages_and_keeps_only_our_labels(client: VastClient, fake: FakeVast) -> None:
    provider = VastProvider(client)
    for number in range(30):
        fake.add_offer(1000 + number, machine_id=500 + number)
        label = make_label("test", f"r{number}") if number % 3 else f"someone-else-{number}"
        client.create_instance(1000 + number, image="img", disk_gb=10, env={}, label=label)

    ours = provider.list_instances()

    assert len(fake.requests_to("GET", "/api/v1/instances/")) == 2  # 25 + 5 rows
    assert len(ours) == 20 and all(i.label and i.label.startswith("mam-test-") for i in ours)
    assert len(provider.list_instances(label_prefix="")) == 30


def test_destroy_is_idempotent_and_survives_a_429(provider: VastProvider, fake: FakeVast) -> None:
    instance = provider.launch("201", SPEC)
    fake.rate_limit_destroys(1)

    provider.destroy(instance.id)
    provider.destroy(instance.id)

    assert fake.live_instances() == []
    assert provider.get(instance.id) is None


def test_destroy_reports_an_instance_still_listed(provider: VastProvider, fake: FakeVast) -> None:
    instance = provider.launch("201", SPEC)
    fake.linger_after_destroy(1)

    with pytest.raises(NotYetTerminatedError):
        provider.destroy(instance.id)
    provider.destroy(instance.id)


@pytest.mark.parametrize(
    ("fault", "state"),
    [
        (InstanceFault.STUCK_LOADING, InstanceState.LOADING),
        (InstanceFault.OCI_ERROR, InstanceState.LOADING),
        (InstanceFault.EXITED, InstanceState.EXITED),
        (InstanceFault.OUTBID, InstanceState.STOPPED),
    ],
)
def test_instance_faults_are_reported_as_typed_states(
    provider: VastProvider, fake: FakeVast, clock: FakeClock, fault: InstanceFault, state: InstanceState
) -> None:
    fake.fault_next_instances(fault)
    instance = provider.launch("201", SPEC)
    clock.advance(60)

    [seen] = provider.list_instances()

    assert seen.id == instance.id and seen.state is state
    assert seen.has_oci_error is (fault is InstanceFault.OCI_ERROR)
    assert seen.outbid is (fault is InstanceFault.OUTBID)


def test_an_outbid_instance_bills_storage_only(provider: VastProvider, fake: FakeVast, clock: FakeClock) -> None:
    instance = provider.launch("201", SPEC)
    fake.fault(int(instance.id), InstanceFault.OUTBID)
    before = fake.spent_usd
    clock.advance(3600)

    assert fake.spent_usd - before == pytest.approx(0.15 * 40 / 720)


def test_logs_are_fetched_from_the_result_url_without_credentials(
    provider: VastProvider, fake: FakeVast, sleeps: list[float]
) -> None:
    instance = provider.launch("201", SPEC)
    fake.delay_logs(2)

    text = provider.logs(instance.id, tail=50)

    assert "pulling ghcr.io/example/gpu-worker:1.0" in text
    fetches = fake.requests_to("GET", "/_results/")
    assert len(fetches) == 3 and len(sleeps) == 2
    assert all("authorization" not in r.headers for r in fetches)
    assert fake.requests_to("PUT", "/api/v0/instances/request_logs/")[-1].body == {"tail": "50"}


def test_a_wrong_key_is_an_auth_error_that_never_shows_the_key(
    fake: FakeVast, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "wrong-key-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    errors: list[ProviderError] = []
    with VastClient(secret, fake.url, transport=fake.transport(), sleep=lambda _: None) as bad:
        for call in (bad.list_instances, lambda: bad.search_offers({}), lambda: bad.destroy_instance(1)):
            with pytest.raises(ProviderAuthError) as refused:
                call()
            errors.append(refused.value)
        fake.rate_limit(100)
        with pytest.raises(ProviderError) as limited:
            bad.list_instances()
        errors.append(limited.value)

    assert secret not in repr(bad)
    for error in errors:
        assert secret not in str(error) and secret not in repr(error)
    assert secret not in caplog.text


def test_the_api_key_is_sent_as_a_bearer_token_and_kept_out_of_settings_repr(
    provider: VastProvider, fake: FakeVast
) -> None:
    settings = Settings(vast_api_key=fake.api_key, vast_api_url=fake.url)

    assert provider.list_instances() == []
    assert fake.requests[-1].headers["authorization"] == f"Bearer {fake.api_key}"
    assert fake.api_key not in repr(settings)
    assert VastProvider.from_settings(settings).client.base_url == fake.url
