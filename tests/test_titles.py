"""Item titles that are not valid UTF-8, or very long, on the real stack: Spark reads them, the features
carry them, the text encoder embeds them, a real night publishes with them (docs/reliability.md).

A Parquet STRING is UTF-8 by the format, but neither writers nor Spark check it: pyarrow writes a string
column viewed from arbitrary bytes, and an export may well store titles as BINARY in some legacy encoding.
"""

from __future__ import annotations

import logging
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_nightly_flow import CONFIG, latest

from jobs.generate import generate
from model.text_encoder import MAX_TEXT_CHARS, item_text_embeddings

RUN_DATE = date(2026, 11, 1)
LATIN1 = "Café Crème à la carte".encode("latin-1")  # é, è, à: one byte each, none of them UTF-8
REPAIRED = "Caf\ufffd Cr\ufffdme \ufffd la carte"
LONG = "word " * 200_000  # 1 MB


def edit_items(landing: Path, copy: Path, title: pa.Array, text: pa.Array | None = None) -> Path:
    """A copy of the landing zone whose items carry `title` (and `text`, when given) in place of theirs."""
    shutil.copytree(landing, copy)
    [part] = (copy / "items").glob("*.parquet")
    items = pq.read_table(part)
    items = items.set_column(items.schema.get_field_index("title"), "title", title)
    if text is not None:
        items = items.set_column(items.schema.get_field_index("text"), "text", text)
    pq.write_table(items, part)
    return copy


def as_binary(items: pa.Table, edits: dict[int, bytes]) -> pa.Array:
    """The items' titles as a BINARY column, UTF-8 encoded, with row i replaced by `edits[i]`."""
    cells = [None if t is None else t.encode() for t in items.column("title").to_pylist()]
    for i, value in edits.items():
        cells[i] = value
    return pa.array(cells, pa.binary())


def invalid_strings(column: pa.ChunkedArray, edits: dict[int, bytes]) -> pa.Array:
    """`column` as a STRING column whose row i holds the raw bytes `edits[i]`: unchecked, as writers do."""
    cells = [None if t is None else t.encode() for t in column.to_pylist()]
    for i, value in edits.items():
        cells[i] = value
    return pa.array(cells, pa.binary()).view(pa.string())


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("titles")
    generate(root / "landing", users=30, items=12, days=4, seed=7, end_date=RUN_DATE)
    return root / "landing"


def items_of(landing: Path) -> pa.Table:
    [part] = (landing / "items").glob("*.parquet")
    return pq.read_table(part)


@pytest.mark.parametrize("kind", ["binary", "string"])
def test_titles_that_are_not_utf8_are_repaired_counted_and_named(spark, landing, tmp_path, caplog, kind):
    """Latin-1 bytes in a BINARY title, or in a STRING title that claims UTF-8: U+FFFD where the bytes were
    invalid, the rest of the title and every other item untouched, the item ids in a warning; what Spark
    then writes is valid UTF-8, which pyarrow (training, scoring) reads."""
    from jobs.landing import read_items

    original = items_of(landing)
    ids = original.column("item_id").to_pylist()
    if kind == "binary":
        title = as_binary(original, {2: LATIN1, 5: b"\xff\xfe"})
    else:
        title = invalid_strings(original.column("title"), {2: LATIN1, 5: b"\xff\xfe"})
    copy = edit_items(landing, tmp_path / "landing", title)

    with caplog.at_level(logging.WARNING, logger="jobs.landing"):
        items = read_items(spark, str(copy))
    assert "2 items have a title or text that is not valid UTF-8" in caplog.text
    assert repr(ids[2]) in caplog.text and repr(ids[5]) in caplog.text

    items.select("item_id", "title", "text").write.parquet(str(tmp_path / "out"))
    read_back = pq.read_table(tmp_path / "out")
    read_back.validate(full=True)  # raises on invalid UTF-8
    titles = dict(
        zip(read_back.column("item_id").to_pylist(), read_back.column("title").to_pylist(), strict=True)
    )
    assert titles[ids[2]] == REPAIRED
    assert titles[ids[5]] == "\ufffd\ufffd"
    expected = original.column("title").to_pylist()
    assert all(titles[i] == t for k, (i, t) in enumerate(zip(ids, expected, strict=True)) if k not in (2, 5))


def test_a_text_column_of_another_type_fails_the_read_naming_it(spark, landing, tmp_path):
    from jobs.landing import read_items

    titles = items_of(landing).column("title").to_pylist()
    copy = edit_items(landing, tmp_path / "landing", pa.array([[t] for t in titles], pa.list_(pa.string())))
    with pytest.raises(ValueError, match=r"text columns \{'title': 'array<string>'\} must be string"):
        read_items(spark, str(copy))


def test_a_long_text_is_embedded_from_its_first_max_text_chars(tmp_path, caplog):
    """A 1 MB title gets the vector of its first MAX_TEXT_CHARS characters, and the cut is logged."""
    texts = ["red apple pie", "green apple tart", "blue cheese", LONG + "tail"]
    with caplog.at_level(logging.WARNING, logger="model.text_encoder"):
        vectors = item_text_embeddings(texts, "tfidf", 4, tmp_path)
    assert f"1 item texts cut to their first {MAX_TEXT_CHARS} characters" in caplog.text
    cut = item_text_embeddings([LONG[:MAX_TEXT_CHARS]], "tfidf", 4, tmp_path)
    np.testing.assert_array_equal(vectors[3], cut[0])
    assert np.abs(vectors[3]).sum() > 0


def test_a_night_with_latin1_and_1mb_titles_publishes(tmp_path, spark, prefect_backend):
    """A real flow run with TF-IDF text features: a latin-1 BINARY title, a 1 MB title and a description
    with invalid bytes reach features, training and scoring, and the night publishes every user's top K;
    items/ keeps the whole long title (only the text features cut it)."""
    from flows.nightly import nightly

    generate(tmp_path / "clean", users=150, items=60, days=14, seed=3, end_date=RUN_DATE)
    original = items_of(tmp_path / "clean")
    ids = original.column("item_id").to_pylist()
    title = as_binary(original, {0: LATIN1, 1: LONG.encode()})
    text = invalid_strings(original.column("text"), {2: b"caf\xe9 au lait"})
    landing = edit_items(tmp_path / "clean", tmp_path / "landing", title, text)
    config = tmp_path / "config.toml"
    config.write_text(
        CONFIG.format(root=tmp_path, top_k=5).replace(
            "[model]\n", '[model]\ntext_encoder = "tfidf"\ntext_dim = 8\n'
        )
    )

    result = nightly(run_date=RUN_DATE, config_path=str(config), landing=str(landing), show_progress=False)

    assert result["status"] == "published"
    recs = latest(tmp_path / "warehouse.duckdb")
    features = tmp_path / "work/runs/2026-11-01/features"
    users = set(pq.read_table(features / "users").column("user_id").to_pylist())
    assert set(recs["user_id"]) == users and (recs.groupby("user_id").size() == 5).all()
    items = pq.read_table(features / "items")
    items.validate(full=True)
    rows = {r["item_id"]: r for r in items.select(["item_id", "title", "text"]).to_pylist()}
    assert rows[ids[0]]["title"] == REPAIRED
    assert rows[ids[1]]["title"] == LONG
    assert rows[ids[2]]["text"] == "caf\ufffd au lait"
    assert (tmp_path / "work/runs/2026-11-01/report.html").is_file()  # the report reads raw titles too
