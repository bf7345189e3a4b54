"""The duplicates answer of the REST API as the command-line client reads and prints it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict
from rich.box import SIMPLE
from rich.table import Table
from rich.text import Text


class DuplicateMember(BaseModel):
    """One file of a group; ``reason`` says why it belongs (null for the first)."""

    model_config = ConfigDict(extra="ignore")
    id: str
    job_id: str
    name: str
    size: int
    width: int | None = None
    height: int | None = None
    created_at: datetime | None = None
    reason: str | None = None


class DuplicateGroupView(BaseModel):
    """A group of duplicates and its key (to dismiss it)."""

    model_config = ConfigDict(extra="ignore")
    key: str
    kind: str
    reason: str
    items: list[DuplicateMember]


class DuplicateGroupsView(BaseModel):
    """A page of groups, largest first."""

    model_config = ConfigDict(extra="ignore")
    data: list[DuplicateGroupView]
    count: int
    hidden: int = 0
    kind: str
    threshold: int | None = None


def duplicates_table(page: DuplicateGroupsView) -> Table:
    """One row per file, groups one after another, each group's first row showing its key and reason."""
    title = f"{page.count} {page.kind} duplicate group{'' if page.count == 1 else 's'}"
    if page.hidden:
        title += f" ({page.hidden} marked as not duplicates)"
    table = Table(title=title, box=SIMPLE)
    table.add_column("group", no_wrap=True)
    table.add_column("asset id", no_wrap=True, min_width=36)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("pixels", no_wrap=True)
    table.add_column("name", ratio=1)
    table.add_column("why", ratio=1)
    for group in page.data:
        for position, item in enumerate(group.items):
            pixels = f"{item.width}x{item.height}" if item.width and item.height else "-"
            table.add_row(
                group.key[:12] if position == 0 else "",
                item.id,
                str(item.size),
                pixels,
                Text(item.name),
                Text(item.reason or group.reason),
                end_section=position == len(group.items) - 1,
            )
    return table
