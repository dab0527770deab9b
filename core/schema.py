"""Creates every table Tessera keeps in SQL (importing the modules registers them on Base.metadata)."""

from __future__ import annotations

import core.apikeys
import core.audit
import core.registry
from core.db import Base, Database

TABLE_MODULES = (core.registry, core.apikeys, core.audit)


def create_schema(database: Database) -> None:
    with database.guard():
        Base.metadata.create_all(database.engine)
