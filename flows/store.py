"""The one place where the flows open the warehouse named by a config.

`jobs.warehouse.open_warehouse` picks the backend from `data.warehouse` (a DuckDB file or a PostgreSQL URL,
whose password comes from the Prefect Secret block `data.warehouse_password_block` or the environment).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from jobs.warehouse import WarehouseBase, is_postgres_url, open_warehouse
from nightrec.config import Config


def open_store(cfg: Config, read_only: bool = False) -> WarehouseBase:
    """A warehouse connection (a context manager) for `cfg.data.warehouse`."""
    return open_warehouse(
        cfg.data.warehouse, read_only=read_only, password_block=cfg.data.warehouse_password_block
    )


def published_dates(cfg: Config) -> set[date]:
    """Dates with a published run; none while the DuckDB file does not exist yet."""
    target = cfg.data.warehouse
    if not is_postgres_url(target) and not Path(target).exists():
        return set()
    with open_store(cfg, read_only=True) as store:
        return set(store.published_dates())
