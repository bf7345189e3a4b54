"""Contract: our Vast.ai client sends what the official ``vastai`` CLI sends, against the same fake server.

The official package is not our dependency (it pins exact Pillow and cryptography versions that would constrain
ours), so it is installed with ``pip install --target`` into the pytest cache once (about 11 s) and run in
subprocesses with ``PYTHONPATH`` pointing there. Both clients drive the same operations on one fake; the test
compares what the fake recorded: method, path, query, the JSON body after number normalisation (the CLI sends
numbers as strings), and the auth header scheme. The CLI also reads the fake's answers, which checks the fake's
shapes against the official parser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.providers.base import LaunchSpec, OfferFilters
from orchestrator.providers.vast.provider import VastProvider, make_label
from orchestrator.settings import Settings
from tests.fakes.vast_server import FakeVast, RecordedRequest

VASTAI_VERSION = "1.9.1"
INSTALL_TIMEOUT_S = 300
CLI_TIMEOUT_S = 60
_CLI_ENTRY = "import sys; from vastai.cli.main import main; sys.argv[0] = 'vastai'; main()"

FILTERS = OfferFilters(
    gpu_names=("RTX 5090", "RTX 4090"),
    min_cuda=12.8,
    min_reliability=0.98,
    min_inet_down_mbps=500,
    min_direct_ports=1,
    disk_gb=40,
    max_dph_total=0.9,
    excluded_machine_ids=frozenset({7, 9}),
)
# The same filters in the CLI's query language (underscores stand for spaces in values).
CLI_QUERY = (
    "verified=true external=false rentable=true rented=false gpu_name in [RTX_5090,RTX_4090] num_gpus=1 "
    "cuda_max_good>=12.8 reliability>=0.98 inet_down>=500 direct_port_count>=1 disk_space>=40 dph_total<=0.9 "
    "machine_id notin [7,9]"
)
SPEC = LaunchSpec(
    image="ghcr.io/example/gpu-worker:1.0",
    label=make_label("contract", "row1"),
    disk_gb=40,
    env={"GPUW_TOKEN": "per-instance-token"},
    ports=(8000,),
    onstart="echo started",
)
CLI_CREATE = [
    "--image",
    SPEC.image,
    "--disk",
    "40",
    "--label",
    SPEC.label,
    "--env",
    "-e GPUW_TOKEN=per-instance-token -p 8000:8000",
    "--onstart-cmd",
    "echo started",
    "--cancel-unavail",
    "--args",  # last: an empty --args selects the "args" runtype (the image's entrypoint)
]


@pytest.fixture(scope="session")
def vastai_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the official ``vastai`` package and its dependencies, installed once per cache."""
    key = f"vastai-{VASTAI_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    root = cache.mkdir(key) if cache is not None else tmp_path_factory.mktemp(key)
    site = root / "site"
    if (root / "complete").exists():
        return site
    staging = root / f"staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]
    try:
        done = subprocess.run(
            [*command, str(staging), f"vastai=={VASTAI_VERSION}"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"installing vastai=={VASTAI_VERSION} from the package index took over {INSTALL_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.skip(f"the official vastai=={VASTAI_VERSION} could not be installed: {done.stderr.strip()[-500:]}")
    shutil.rmtree(site, ignore_errors=True)
    staging.rename(site)
    (root / "complete").write_text(VASTAI_VERSION)
    return site


class OfficialCli:
    """Runs the official CLI against the fake with a private home (no saved keys, no update check)."""

    def __init__(self, site: Path, fake: FakeVast, home: Path) -> None:
        self.fake = fake
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(site),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_DATA_HOME": str(home / "data"),
            "VASTAI_NO_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
        }

    def run(self, *args: str, raw: bool = True) -> str:
        """The CLI's stdout; fails the test with its stderr when it exits non-zero."""
        options = ["--url", self.fake.url, "--api-key", self.fake.api_key, *(["--raw"] if raw else [])]
        done = subprocess.run(
            [sys.executable, "-c", _CLI_ENTRY, *options, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert done.returncode == 0, f"vastai {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    def json(self, *args: str) -> Any:
        """The CLI's ``--raw`` answer."""
        return json.loads(self.run(*args))


@pytest.fixture
def official(vastai_site: Path, fake_vast: FakeVast, tmp_path: Path) -> OfficialCli:
    return OfficialCli(vastai_site, fake_vast, tmp_path)


@pytest.fixture
def ours(fake_vast: FakeVast) -> Iterator[VastProvider]:
    provider = VastProvider.from_settings(Settings(vast_api_key=fake_vast.api_key, vast_api_url=fake_vast.url))
    yield provider
    provider.client.close()


def normal(value: Any) -> Any:
    """JSON with numbers compared as numbers, whether sent as 40, 40.0 or "40"."""
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def last(fake: FakeVast, method: str, path_prefix: str) -> RecordedRequest:
    found = fake.requests_to(method, path_prefix)
    assert found, f"no {method} {path_prefix} recorded"
    return found[-1]


def assert_same_call(theirs: RecordedRequest, mine: RecordedRequest, *, same_path: bool = True) -> None:
    assert mine.method == theirs.method
    if same_path:
        assert mine.path == theirs.path
    assert mine.headers["authorization"].split(" ")[0] == theirs.headers["authorization"].split(" ")[0] == "Bearer"


def test_offer_search_sends_the_official_query(official: OfficialCli, ours: VastProvider, fake_vast: FakeVast) -> None:
    cli_rows = official.json("search", "offers", CLI_QUERY, "--storage", "40", "--limit", "64", "-o", "dph_total")
    theirs = last(fake_vast, "POST", "/api/v0/bundles/")
    offers = ours.search_offers(FILTERS)
    mine = last(fake_vast, "POST", "/api/v0/bundles/")

    assert_same_call(theirs, mine)
    assert normal(mine.body) == normal(theirs.body)
    assert fake_vast.unknown_query_fields == set()
    assert [o.id for o in offers] == [str(row["id"]) for row in cli_rows] == ["101", "102"]


def test_create_sends_every_field_the_official_cli_sets(
    official: OfficialCli, ours: VastProvider, fake_vast: FakeVast
) -> None:
    created = official.json("create", "instance", "101", *CLI_CREATE)
    theirs = last(fake_vast, "PUT", "/api/v0/asks/")
    instance = ours.launch("102", SPEC)
    mine = last(fake_vast, "PUT", "/api/v0/asks/")

    assert_same_call(theirs, mine, same_path=False)
    assert (theirs.path, mine.path) == ("/api/v0/asks/101/", "/api/v0/asks/102/")
    their_set = {k: v for k, v in theirs.body.items() if v not in (None, False)}
    assert normal({k: mine.body.get(k) for k in their_set}) == normal(their_set)
    # Keys we send beyond those are ones the official payload also carries (here: set to their defaults there).
    assert set(mine.body) <= set(theirs.body)
    assert mine.body["cancel_unavail"] is True and mine.body["runtype"] == "args"
    assert created["success"] is True and int(instance.id) != created["new_contract"]


def test_list_show_logs_and_destroy_match_the_official_cli(
    official: OfficialCli, ours: VastProvider, fake_vast: FakeVast
) -> None:
    instance = ours.launch("101", SPEC)

    cli_rows = official.json("show", "instances")
    theirs_list = last(fake_vast, "GET", "/api/v1/instances/")
    listed = ours.list_instances()
    mine_list = last(fake_vast, "GET", "/api/v1/instances/")
    assert_same_call(theirs_list, mine_list)
    assert {k: json.loads(v) for k, v in mine_list.query.items()} == {
        k: json.loads(v) for k, v in theirs_list.query.items()
    }
    assert [i.id for i in listed] == [str(row["id"]) for row in cli_rows] == [instance.id]
    assert listed[0].extra_env == cli_rows[0]["extra_env"]

    cli_row = official.json("show", "instance", instance.id)
    theirs_show = last(fake_vast, "GET", f"/api/v0/instances/{instance.id}/")
    shown = ours.get(instance.id)
    mine_show = last(fake_vast, "GET", f"/api/v0/instances/{instance.id}/")
    assert_same_call(theirs_show, mine_show)
    assert mine_show.query == theirs_show.query == {"owner": "me"}
    assert shown is not None and shown.label == cli_row["label"] == SPEC.label

    cli_log = official.run("logs", instance.id, "--tail", "100", raw=False)
    theirs_logs = last(fake_vast, "PUT", "/api/v0/instances/request_logs/")
    text = ours.logs(instance.id, tail=100)
    mine_logs = last(fake_vast, "PUT", "/api/v0/instances/request_logs/")
    assert_same_call(theirs_logs, mine_logs)
    assert mine_logs.body == theirs_logs.body == {"tail": "100"}
    assert f"pulling {SPEC.image}" in text and f"pulling {SPEC.image}" in cli_log
    assert all("authorization" not in r.headers for r in fake_vast.requests_to("GET", "/_results/"))

    second = ours.launch("102", SPEC)
    official.run("destroy", "instance", instance.id, "-y")
    theirs_destroy = last(fake_vast, "DELETE", "/api/v0/instances/")
    ours.destroy(second.id)
    mine_destroy = last(fake_vast, "DELETE", "/api/v0/instances/")
    assert_same_call(theirs_destroy, mine_destroy, same_path=False)
    assert (theirs_destroy.path, mine_destroy.path) == (
        f"/api/v0/instances/{instance.id}/",
        f"/api/v0/instances/{second.id}/",
    )
    assert mine_destroy.body == theirs_destroy.body == {}
    assert fake_vast.live_instances() == []


def test_settings_url_and_key_reach_a_real_http_server(ours: VastProvider, fake_vast: FakeVast) -> None:
    fake_vast.rate_limit(2)

    assert ours.list_instances() == []
    assert len(fake_vast.requests_to("GET", "/api/v1/instances/")) == 3
