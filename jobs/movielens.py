"""MovieLens 100K / 1M to the landing zone: every rating becomes a `rating` event whose value is the rating.

MovieLens has no catalogue dates, so an item's `created_at` is its first rating: the evaluation protocol
treats a movie as known from the moment someone first rated it, and only rated movies are kept. Users are
kept when they have at least one rating too. Titles are the item text the text encoder reads, so they are
cleaned once here (`clean_title`).
"""

from __future__ import annotations

import csv
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from jobs.generate import EVENTS_SCHEMA, ITEMS_SCHEMA, TS, write_landing

GZIP_MAGIC = b"\x1f\x8b"


def clean_title(title: str) -> str:
    """One form of each title: Unicode NFC, no control characters, single spaces, none inside parentheses.

    The files are latin-1 and carry stray spaces ("Two Friends (1986) ", "(Kådisbellan )"); a text encoder
    or a cache keyed by the text would otherwise treat equal titles as different ones.
    """
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in title)
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text))
    return re.sub(r"\( ", "(", re.sub(r" \)", ")", text)).strip()


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file missing: {path}")
    return path


def _is_gzip(path: Path) -> bool:
    if path.suffix == ".gz":
        return True
    with path.open("rb") as f:
        return f.read(2) == GZIP_MAGIC


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    """Read a `::` separated file with the fast C parser.

    Splitting on a single `:` puts an empty field between every two values, so the wanted columns are the
    even ones; only valid where no field contains a colon (ratings and users, not movie titles).
    """
    compression = "gzip" if _is_gzip(path) else None
    return pd.read_csv(
        path,
        sep=":",
        header=None,
        usecols=list(range(0, 2 * len(names), 2)),
        names=[f"c{k}" for k in range(2 * len(names) - 1)],
        dtype=str,
        compression=compression,
        encoding="latin-1",
    ).set_axis(names, axis=1)


def _read_100k(source: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ratings = pd.read_csv(
        _require(source / "u.data"),
        sep="\t",
        header=None,
        names=["user", "item", "rating", "ts"],
        dtype="int64",
    )
    genres = pd.read_csv(_require(source / "u.genre"), sep="|", header=None, names=["name", "idx"])
    genres = genres.dropna().sort_values("idx")["name"].tolist()
    movies = pd.read_csv(
        _require(source / "u.item"),
        sep="|",
        header=None,
        encoding="latin-1",
        names=["item", "title", "release", "video", "url", *genres],
        dtype={"title": str},
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
    )
    flags = movies[genres].to_numpy(dtype=bool)
    movies["categories"] = [[g for g, on in zip(genres, row, strict=True) if on] for row in flags]
    users = pd.read_csv(
        _require(source / "u.user"),
        sep="|",
        header=None,
        names=["user", "age", "gender", "occupation", "zip"],
        dtype={"age": "int64", "gender": str, "occupation": str, "zip": str},
        quoting=csv.QUOTE_NONE,
    )
    return ratings, movies[["item", "title", "categories"]], users


def _read_1m(source: Path, ratings: Path | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    path = _require(ratings if ratings is not None else source / "ratings.dat")
    rated = _read_double_colon(path, ["user", "item", "rating", "ts"]).astype("int64")
    lines = _require(source / "movies.dat").read_bytes().decode("latin-1").splitlines()
    fields = [line.split("::", 2) for line in lines if line]
    movies = pd.DataFrame(
        {
            "item": [int(f[0]) for f in fields],
            "title": [f[1] for f in fields],
            "categories": [f[2].split("|") for f in fields],
        }
    )
    users = _read_double_colon(_require(source / "users.dat"), ["user", "gender", "age", "occupation", "zip"])
    users = users.astype({"user": "int64", "age": "int64"})
    return rated, movies, users


def import_movielens(source: Path, out: Path, ratings: Path | None = None) -> dict:
    """Write the landing zone for MovieLens 100K (`u.data` in `source`) or 1M (`movies.dat` in `source`).

    For 1M the ratings come from `ratings` when given (plain or gzipped, e.g. the shared subset
    `ratings.users-0001-2999.dat.gz`), else from `source/ratings.dat`. Event ids are `ml-<user>-<item>`,
    unique because a user rates a movie once; a file that breaks this is rejected. Items' `created_at` is
    their first rating (MovieLens has no catalogue dates). In 1M, `age` is the file's age-bucket code and
    `occupation` its occupation code, as text. Returns a summary of what was written.
    """
    source, out = Path(source), Path(out)
    if (source / "u.data").is_file():
        if ratings is not None:
            raise ValueError("a separate ratings file applies to MovieLens 1M only; 100K reads u.data")
        kind = "100k"
        rated, movies, users = _read_100k(source)
    elif (source / "movies.dat").is_file():
        kind = "1m"
        rated, movies, users = _read_1m(source, None if ratings is None else Path(ratings))
    else:
        raise FileNotFoundError(
            f"{source}: neither u.data (MovieLens 100K) nor movies.dat (MovieLens 1M) found"
        )

    dup = rated.duplicated(["user", "item"])
    if dup.any():
        user, item = rated.loc[dup, ["user", "item"]].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} repeated (user, item) ratings, e.g. user {user} item {item}: "
            "event ids ml-<user>-<item> would not be unique"
        )
    unknown = np.setdiff1d(rated["item"].unique(), movies["item"].to_numpy())
    if unknown.size:
        raise ValueError(
            f"{unknown.size} rated movie ids missing from the movie file, e.g. {unknown[:5].tolist()}"
        )

    rated = rated.sort_values(["ts", "user", "item"], kind="stable", ignore_index=True)
    user_s = pa.array(rated["user"].to_numpy()).cast(pa.string())
    item_s = pa.array(rated["item"].to_numpy()).cast(pa.string())
    ts = pa.array(rated["ts"].to_numpy() * 1_000_000, pa.int64()).cast(TS)
    events = pa.table(
        {
            "event_id": pc.binary_join_element_wise("ml", user_s, item_s, "-"),
            "user_id": user_s,
            "item_id": item_s,
            "event_type": pa.array(np.full(len(rated), "rating", dtype=object), pa.string()),
            "value": pa.array(rated["rating"].to_numpy(dtype="float64")),
            "ts": ts,
        },
        schema=EVENTS_SCHEMA,
    )

    first_ts = rated.groupby("item")["ts"].min()
    movies = movies.set_index("item").loc[first_ts.index]
    items = pa.table(
        {
            "item_id": pa.array(first_ts.index.to_numpy()).cast(pa.string()),
            "title": pa.array([clean_title(t) for t in movies["title"]], pa.string()),
            "categories": pa.array(movies["categories"].tolist(), pa.list_(pa.string())),
            "text": pa.nulls(len(movies), pa.string()),
            "created_at": pa.array(first_ts.to_numpy() * 1_000_000, pa.int64()).cast(TS),
        },
        schema=ITEMS_SCHEMA,
    )

    users = users[users["user"].isin(rated["user"].unique())].sort_values("user")
    users_table = pa.table(
        {
            "user_id": pa.array(users["user"].to_numpy()).cast(pa.string()),
            "gender": pa.array(users["gender"].tolist(), pa.string()),
            "age": pa.array(users["age"].to_numpy(), pa.int32()),
            "occupation": pa.array(users["occupation"].tolist(), pa.string()),
            "zip": pa.array(users["zip"].tolist(), pa.string()),
        }
    )
    write_landing(out, events, items, users_table)
    days = pd.to_datetime(rated["ts"].iloc[[0, -1]], unit="s", utc=True).dt.date
    return {
        "format": kind,
        "events": len(rated),
        "users": users_table.num_rows,
        "items": items.num_rows,
        "first_day": days.iloc[0].isoformat(),
        "last_day": days.iloc[-1].isoformat(),
    }
