"""MovieLens import: tiny fixtures in both formats, then the real 100K and 1M data when it is there."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from jobs.movielens import clean_title, import_movielens

ML100K = SHARED_DATA / "movielens-100k"
ML1M = SHARED_DATA / "movielens-1m"
ML1M_RATINGS = ML1M / "ratings.users-0001-2999.dat.gz"


def read_landing(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    events = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pandas()
    return events, pq.read_table(out / "items").to_pandas(), pq.read_table(out / "users").to_pandas()


def utc(seconds: int) -> pd.Timestamp:
    return pd.Timestamp(seconds, unit="s", tz="UTC")


RATINGS = [(1, 1, 5, 881250949), (1, 2, 3, 881250000), (2, 1, 4, 891717742), (2, 2, 1, 878887116)]


@pytest.fixture
def ml100k(tmp_path) -> Path:
    """The 100K layout with 3 genres, one unrated movie, one user without ratings, a latin-1 title and a title
    with stray spaces."""
    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "u.genre").write_text("unknown|0\nChildren's|1\nComedy|2\n\n")
    (src / "u.item").write_bytes(
        "1|Toy Story  (1995) |01-Jan-1995||http://x|0|1|1\n"
        "2|Am\xe9lie (2001)|01-Jan-2001||http://y|0|0|1\n"
        "3|unknown||||1|0|0\n".encode("latin-1")
    )
    (src / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    (src / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|02134\n3|30|F|writer|T8H1N\n")
    return src


def test_100k_format(ml100k, tmp_path):
    out = tmp_path / "landing"
    summary = import_movielens(ml100k, out)
    assert summary == {
        "format": "100k",
        "events": 4,
        "users": 2,
        "items": 2,
        "first_day": "1997-11-07",
        "last_day": "1998-04-04",
    }
    events, items, users = read_landing(out)
    events = events.sort_values("ts", ignore_index=True)
    assert events["event_id"].tolist() == ["ml-2-2", "ml-1-2", "ml-1-1", "ml-2-1"]
    assert (events["event_type"] == "rating").all()
    assert events["value"].tolist() == [1.0, 3.0, 5.0, 4.0]
    assert events["ts"].tolist() == [utc(878887116), utc(881250000), utc(881250949), utc(891717742)]
    assert items["item_id"].tolist() == ["1", "2"]  # the unrated movie 3 is left out
    assert items["title"].tolist() == ["Toy Story (1995)", "Am\xe9lie (2001)"]
    assert items["categories"].map(list).tolist() == [["Children's", "Comedy"], ["Comedy"]]
    assert items["text"].isna().all()
    assert items["created_at"].tolist() == [utc(881250949), utc(878887116)]  # each movie's first rating
    assert users.to_dict("records") == [
        {"user_id": "1", "gender": "M", "age": 24, "occupation": "technician", "zip": "85711"},
        {"user_id": "2", "gender": "F", "age": 53, "occupation": "other", "zip": "02134"},
    ]


def test_titles_are_cleaned_once():
    assert clean_title("Am\u0065\u0301lie\t(2001)\r") == "Am\xe9lie (2001)"  # decomposed accent, tab, CR
    assert (
        clean_title(" Slingshot, The (K\xe5disbellan ) (1993) ") == "Slingshot, The (K\xe5disbellan) (1993)"
    )
    assert clean_title("") == ""


def test_missing_files_are_named(ml100k, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither u\.data .* nor movies\.dat"):
        import_movielens(tmp_path / "nothing", tmp_path / "out")
    (ml100k / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item"):
        import_movielens(ml100k, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_repeated_rating_is_rejected(ml100k, tmp_path):
    with (ml100k / "u.data").open("a") as f:
        f.write("1\t1\t2\t891717743\n")
    with pytest.raises(ValueError, match="repeated .*user 1 item 1"):
        import_movielens(ml100k, tmp_path / "out")


def test_1m_format_with_gzipped_ratings_detected_by_content(tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    (src / "movies.dat").write_bytes(
        "1::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n2::Am\xe9lie ( Le Fabuleux ) (2001)::Comedy\n".encode(
            "latin-1"
        )
    )
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::02134\n")
    ratings = tmp_path / "ratings.bin"  # no .gz suffix: the gzip magic bytes decide
    ratings.write_bytes(gzip.compress(b"1::1::5::978300760\n2::1::3::978302109\n2::2::4::978301968\n"))
    with pytest.raises(FileNotFoundError, match=r"ratings\.dat"):
        import_movielens(src, tmp_path / "out")
    summary = import_movielens(src, tmp_path / "out", ratings=ratings)
    assert (summary["format"], summary["events"], summary["users"], summary["items"]) == ("1m", 3, 2, 2)
    events, items, users = read_landing(tmp_path / "out")
    assert sorted(events["event_id"]) == ["ml-1-1", "ml-2-1", "ml-2-2"]
    assert items["title"].tolist() == [
        "Star Wars: Episode IV - A New Hope (1977)",
        "Am\xe9lie (Le Fabuleux) (2001)",
    ]
    assert items["categories"].map(list).tolist() == [["Action", "Sci-Fi"], ["Comedy"]]
    assert items["created_at"].tolist() == [utc(978300760), utc(978301968)]
    assert users[["user_id", "gender", "age", "occupation", "zip"]].values.tolist() == [
        ["1", "F", 1, "10", "48067"],
        ["2", "M", 56, "16", "02134"],
    ]


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not in shared data")
def test_real_100k(tmp_path):
    out = tmp_path / "landing"
    summary = import_movielens(ML100K, out)
    assert (summary["events"], summary["users"], summary["items"]) == (100_000, 943, 1682)
    events, items, users = read_landing(out)
    assert len(events) == 100_000 and events["event_id"].is_unique
    assert events["value"].min() == 1.0 and events["value"].max() == 5.0
    assert (events["ts"].dt.strftime("%Y-%m-%d") == events["dt"].astype(str)).all()
    first = events.groupby("item_id")["ts"].min()
    assert (items.set_index("item_id")["created_at"] == first.reindex(items["item_id"]).to_numpy()).all()
    assert len(items) == 1682 and len(users) == 943
    assert "Mis\xe9rables, Les (1995)" in set(items["title"])  # latin-1 decoded, not mojibake
    assert (items["title"].map(clean_title) == items["title"]).all()
    assert pq.read_schema(out / "items" / "part-0.parquet").field("categories").type == pa.list_(pa.string())


@pytest.mark.skipif(not ML1M_RATINGS.is_file(), reason="MovieLens 1M (users 1-2999) not in shared data")
def test_real_1m_subset(tmp_path):
    out = tmp_path / "landing"
    summary = import_movielens(ML1M, out, ratings=ML1M_RATINGS)
    with gzip.open(ML1M_RATINGS, "rt") as f:
        lines = sum(1 for _ in f)
    events, items, users = read_landing(out)
    assert summary["events"] == len(events) == lines
    assert events["value"].between(1.0, 5.0).all()
    user_ids = users["user_id"].astype(int)
    assert summary["users"] == len(users) == events["user_id"].nunique()
    assert user_ids.min() >= 1 and user_ids.max() <= 2999
    assert summary["items"] == len(items) == events["item_id"].nunique()
    assert items["categories"].map(len).min() >= 1
    assert (items["title"].map(clean_title) == items["title"]).all() and not items["title"].str.contains(
        "\ufffd"
    ).any()
