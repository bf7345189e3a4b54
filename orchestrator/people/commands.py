"""``orchestrator people``: list the tenant's people, name one, merge one into another. Talks to the REST API like
``submit`` and ``results``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.box import SIMPLE
from rich.table import Table
from rich.text import Text

people_app = typer.Typer(help="People: faces grouped by who they are; list, name and merge them.", no_args_is_help=True)

ApiUrlOption = Annotated[str | None, typer.Option("--api-url", help="API base URL (as for `orchestrator submit`).")]
ApiKeyOption = Annotated[str | None, typer.Option("--api-key", help="Tenant API key (as for `orchestrator submit`).")]


@people_app.command("list")
def people_list(
    order: Annotated[str, typer.Option("--order", help="count (most faces first), unnamed (first) or name.")] = "count",
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="How many to show.")] = 50,
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The tenant's people with their face counts."""
    from orchestrator.cli import _api_errors, _client_config, _print_table, make_client

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        page = client.list_people(order=order, limit=limit)
    table = Table(box=SIMPLE, title=f"{page['count']} people")
    for column in ("person", "name", "faces"):
        table.add_column(column)
    for person in page["data"]:
        table.add_row(person["id"], Text(person["name"] or "(unnamed)"), str(person["face_count"]))
    _print_table(table)


@people_app.command("name")
def people_name(
    person: Annotated[str, typer.Argument(help="Person id.", show_default=False)],
    name: Annotated[str, typer.Argument(help='The name ("" to unname).', show_default=False)],
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Name a person."""
    from orchestrator.cli import _api_errors, _client_config, console, make_client

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        answer = client.rename_person(person, name)
    console.print(Text(f"{answer['id']}: {answer['name'] or '(unnamed)'}"))


@people_app.command("merge")
def people_merge(
    person: Annotated[str, typer.Argument(help="The person to merge (deleted afterwards).", show_default=False)],
    into: Annotated[str, typer.Argument(help="The person who gets the faces.", show_default=False)],
    api_url: ApiUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Merge a person into another: their faces move, the first person is deleted."""
    from orchestrator.cli import _api_errors, _client_config, console, make_client

    config = _client_config(api_url, api_key)
    with make_client(config) as client, _api_errors(config):
        answer = client.merge_person(person, into=into)
    console.print(Text(f"merged into {answer['id']} ({answer['name'] or 'unnamed'}): {answer['face_count']} faces"))
