"""Clustering thresholds, overridable with ``ORCH_PEOPLE__<NAME>`` environment variables (the same names the
orchestrator's settings would use for a nested ``people`` section)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.people.clustering import ClusteringParams

DEFAULTS = ClusteringParams()


class PeopleSettings(BaseSettings):
    """Face clustering thresholds (cosine distances and face counts); see docs/people.md."""

    model_config = SettingsConfigDict(env_prefix="ORCH_PEOPLE__", extra="ignore")

    max_distance: float = Field(default=DEFAULTS.max_distance, gt=0.0, lt=2.0)
    min_faces: int = Field(default=DEFAULTS.min_faces, ge=1)
    assign_max_distance: float = Field(default=DEFAULTS.assign_max_distance, gt=0.0, lt=2.0)
    core_neighbours: int = Field(default=DEFAULTS.core_neighbours, ge=1)

    def params(self) -> ClusteringParams:
        """The thresholds as the pure clustering functions take them."""
        return ClusteringParams(**self.model_dump())


@lru_cache
def clustering_params() -> ClusteringParams:
    """This process's clustering thresholds (read once)."""
    return PeopleSettings().params()
