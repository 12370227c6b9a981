"""Storage management's own tables: replicas still to be written, scrub runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from pacs.db import UTCDateTime, utcnow


class PendingReplica(SQLModel, table=True):
    """A copy an instance should have in ``area`` and does not have yet (``[storage] write``
    names more than one area). Written in the transaction that indexes the instance, so a
    restart catches up."""

    __tablename__ = "pending_replica"
    __table_args__ = (UniqueConstraint("instance", "area", name="uq_pending_replica"),)

    id: int | None = Field(default=None, primary_key=True)
    instance: int = Field(foreign_key="instance.id", index=True)
    area: str
    attempts: int = 0
    last_error: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class ScrubRun(SQLModel, table=True):
    """One pass of the scrubber over every copy: what it found and what it repaired."""

    __tablename__ = "scrub_run"

    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    checked: int = 0
    corrupt: int = 0  # bytes no longer match the recorded SHA-256
    missing: int = 0  # the area no longer holds the key
    repaired: int = 0  # rewritten from a good copy
    unrepairable: int = 0  # no good copy left anywhere
    orphans: int = 0  # objects found in an area that the index does not know (left for a person to look at)
    note: str = ""
