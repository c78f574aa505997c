"""Published recommendations as a Parquet dataset, for readers that want files rather than a database.

Layout (Hive partitioning, one partition per run date, one file per partition):

    <uri>/run_date=2026-11-20/part-0.parquet
    <uri>/run_date=2026-11-21/part-0.parquet

The files hold the warehouse's columns and types (jobs/warehouse.py `arrow_schema`) except `run_date`, which
is the partition key: `pyarrow.dataset(..., partitioning="hive")`, Spark and DuckDB's
`read_parquet('<uri>/*/*.parquet', hive_partitioning = true)` give it back as a column.

Why a single file written beside its final name and then moved over it: a rename onto an existing file is
atomic on a local or POSIX filesystem, so a reader opens either the previous night's file or the new one,
never half of one, and never sees the partition missing (moving a whole directory would need the old one out
of the way first). Object stores have no directory rename at all, while a one-object move is a copy that
appears whole. The temporary name starts with a dot and does not end in `.parquet`, so readers skip it.
Rerunning a date writes the same file name again: same rows, same files, no duplicates.
"""

from __future__ import annotations

import os
import uuid
from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

from jobs.warehouse import check_columns, column_names, published_table

PART = "part-0.parquet"


def _filesystem(uri: str) -> tuple[fs.FileSystem, str]:
    """The filesystem and root path of a URI (s3://, gs://, file://... as far as pyarrow has them) or path."""
    if "://" in uri:
        return fs.FileSystem.from_uri(uri)
    return fs.LocalFileSystem(), os.path.abspath(uri)


def write_parquet_output(recs: pd.DataFrame | pa.Table, run_date: date, uri: str) -> str:
    """Write `recs` (the rows just published for `run_date`) as that date's partition; return its path.

    The partition's previous file is replaced atomically; stray visible files left in the partition (say, by
    an older layout) are removed afterwards so a reader of the directory finds exactly this night's rows.
    """
    task_columns = check_columns(column_names(recs))
    if len(recs) == 0:
        raise ValueError(f"refusing to write an empty partition for {run_date}: it would blank the date out")
    table = published_table(recs, task_columns)
    filesystem, root = _filesystem(uri)
    partition = f"{root.rstrip('/')}/run_date={run_date.isoformat()}"
    final = f"{partition}/{PART}"
    temporary = f"{partition}/.{PART}.{uuid.uuid4().hex}.tmp"

    filesystem.create_dir(partition, recursive=True)
    try:
        pq.write_table(table, temporary, filesystem=filesystem)
        filesystem.move(temporary, final)
    except BaseException:
        if filesystem.get_file_info(temporary).type != fs.FileType.NotFound:
            filesystem.delete_file(temporary)
        raise
    for info in filesystem.get_file_info(fs.FileSelector(partition)):
        if info.path == final or info.base_name.startswith((".", "_")):
            continue
        if info.type == fs.FileType.Directory:
            filesystem.delete_dir(info.path)
        else:
            filesystem.delete_file(info.path)
    return partition
