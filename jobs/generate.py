"""Synthetic interaction logs for the demo, and the writer of the landing zone that every importer shares.

The generator is meant to give the model something to learn that a popularity list cannot fully capture:
users have latent tastes over a few topics, items belong to topics and have a quality and a price, and what a
user is shown, clicks and buys depends on the match between the two. Popularity still matters (impressions
follow a Zipf-like popularity), so a popularity baseline is beaten by a margin, not trivially.

Everything is vectorised with numpy (no per-event Python loop) and drawn from one seeded generator in a fixed
order, so a seed gives the same bytes on every run.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# ---------------------------------------------------------------------------------------------------------
# The landing zone contract (read by jobs/landing.py): written here once for every producer.

TS = pa.timestamp("us", tz="UTC")
EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("value", pa.float64()),
        ("ts", TS),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("text", pa.string()),
        ("created_at", TS),
    ]
)
LANDING_DIRS = ("events", "items", "users")


def write_landing(out: Path, events: pa.Table, items: pa.Table, users: pa.Table | None = None) -> None:
    """Replace the landing zone `out` (events/, items/ and optionally users/) with these tables, all at once.

    The new zone is written to a hidden sibling directory and swapped in with two renames: a crash leaves
    the old zone or the new one, never a mix of both (at worst, between the renames, none; the next run
    cleans up). As the whole directory is swapped, `out` must hold nothing but a landing zone: anything else
    there is refused rather than deleted. Events are partitioned by the UTC day of `ts` (hive `dt=YYYY-MM-DD`,
    in the path only) and should come sorted by `ts`, which keeps each partition a single file.
    """
    out = Path(out).resolve()
    if out.exists():
        foreign = (
            sorted(p.name for p in out.iterdir() if p.name not in LANDING_DIRS) if out.is_dir() else [""]
        )
        if foreign:
            raise FileExistsError(f"{out} is not a landing zone (holds {foreign}); refusing to replace it")
    events = events.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
    items = items.select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA)
    stage = out.with_name(f".{out.name}.staging")
    old = out.with_name(f".{out.name}.replaced")
    for leftover in (stage, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    stage.mkdir(parents=True)
    try:
        _write_events(stage / "events", events)
        (stage / "items").mkdir()
        pq.write_table(items, stage / "items" / "part-0.parquet")
        if users is not None:
            (stage / "users").mkdir()
            pq.write_table(users, stage / "users" / "part-0.parquet")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old)
    else:
        stage.rename(out)


def _write_events(path: Path, events: pa.Table) -> None:
    day = events["ts"].cast(pa.date32())  # the UTC day: the timestamps are UTC
    with_dt = events.append_column("dt", day.cast(pa.string()))
    ds.write_dataset(
        with_dt,
        path,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
        existing_data_behavior="error",
        max_partitions=1_000_000,
        preserve_order=True,
        use_threads=False,
    )


# ---------------------------------------------------------------------------------------------------------
# The generator.

_TOPIC_VOCABULARY = {
    "outdoor": "trail tent summit camp lantern river hiking compass canyon pack",
    "kitchen": "skillet knife spice oven ceramic espresso bread pantry wok kettle",
    "books": "novel mystery saga poetry atlas memoir chronicle classic fable verse",
    "music": "vinyl guitar jazz synth headphones piano drum acoustic studio melody",
    "fitness": "yoga dumbbell running protein mat cardio kettlebell stretch sprint row",
    "gaming": "console controller quest arcade pixel dungeon racing joystick puzzle raid",
    "fashion": "denim linen jacket sneaker scarf leather silk boots tailored vintage",
    "garden": "seed tulip planter compost hose orchid trowel greenhouse herb bonsai",
}
# (topic name, its words), in a fixed order: topic k is TOPICS[k]
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (name, tuple(words.split())) for name, words in _TOPIC_VOCABULARY.items()
)
FILLER = ("classic", "new", "compact", "premium", "everyday", "light", "deluxe", "handmade", "smart", "mini")
SEGMENTS = ("casual", "regular", "power")

DAY_US = 86_400_000_000
SECOND_US = 1_000_000
IMPRESSION_HORIZON_US = DAY_US - 1_800 * SECOND_US  # leaves room for a click and purchase the same day
POPULAR_SHARE = 0.3  # impressions drawn from global popularity rather than from the user's taste
NEW_ITEM_SHARE = 0.3  # items created inside the event window
NEW_USER_SHARE = 0.1  # users who sign up inside the event window


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _epoch_us(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * SECOND_US


def _ids(prefix: str, n: int) -> pa.Array:
    width = max(4, len(str(n - 1)))
    return pa.array([f"{prefix}{k:0{width}d}" for k in range(n)], pa.string())


def _make_items(rng: np.random.Generator, n: int, window_start_us: int, days: int) -> dict[str, np.ndarray]:
    t = len(TOPICS)
    main = rng.integers(0, t, n)
    shift = rng.integers(1, t, n)  # a second topic, never the main one
    second = np.where(rng.random(n) < 0.3, (main + shift) % t, -1)
    popularity = 1.0 / (rng.permutation(n) + 1.0) ** 1.05
    quality = rng.normal(0.0, 0.6, n)
    price = np.round(np.clip(np.exp(rng.normal(3.3 + 0.15 * main, 0.9)), 0.5, 10_000.0), 2)
    created = window_start_us - rng.integers(SECOND_US, 365 * DAY_US, n)
    new = rng.permutation(n)[: int(round(NEW_ITEM_SHARE * n))]
    created[new] = window_start_us + rng.integers(0, days * DAY_US, new.size)
    return {
        "main": main,
        "second": second,
        "popularity": popularity,
        "quality": quality,
        "price": price,
        "created": created,
    }


def _item_texts(rng: np.random.Generator, main: np.ndarray, second: np.ndarray) -> tuple[list, list, list]:
    """Titles, categories and descriptions from the topic vocabularies (a per-item loop: items are few)."""
    n, vocab = main.size, len(TOPICS[0][1])
    title_len = rng.integers(2, 5, n)
    title_words = rng.integers(0, vocab, (n, 4))
    off_topic = rng.random((n, 4)) < 0.15
    off_word = rng.integers(0, len(FILLER), (n, 4))
    text_words = rng.integers(0, vocab, (n, 6))
    text_from_second = rng.random((n, 6)) < 0.4
    no_text = rng.random(n) < 0.05
    titles, categories, texts = [], [], []
    for k in range(n):
        words = TOPICS[main[k]][1]
        title = [FILLER[off_word[k, j]] if off_topic[k, j] else words[title_words[k, j]] for j in range(4)]
        titles.append(" ".join(title[: title_len[k]]).title())
        cats = [TOPICS[main[k]][0]] + ([TOPICS[second[k]][0]] if second[k] >= 0 else [])
        categories.append(cats)
        if no_text[k]:
            texts.append(None)
            continue
        other = TOPICS[second[k]][1] if second[k] >= 0 else words
        body = [
            other[text_words[k, j]] if text_from_second[k, j] else words[text_words[k, j]] for j in range(6)
        ]
        texts.append(f"{' '.join(body).capitalize()} for {cats[0]} lovers.")
    return titles, categories, texts


def _sample_items(
    rng: np.random.Generator, weights: np.ndarray, eligible: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """One item per impression from the row `rows[k]` of `weights`, among the eligible items only.

    A row (a topic) with no eligible item falls back to the last row, global popularity.
    """
    w = weights * eligible
    cum = np.cumsum(w, axis=1)
    totals = cum[:, -1]
    rows = np.where(totals[rows] > 0, rows, weights.shape[0] - 1)
    last_positive = w.shape[1] - 1 - np.argmax(w[:, ::-1] > 0, axis=1)
    u = rng.random(rows.size)
    items = np.empty(rows.size, dtype=np.int64)
    for r in range(weights.shape[0]):
        sel = np.flatnonzero(rows == r)
        if sel.size:
            found = np.searchsorted(cum[r], u[sel] * totals[r], side="right")
            items[sel] = np.minimum(found, last_positive[r])
    return items


def generate(
    out: Path, users: int, items: int, days: int, seed: int, end_date: date = date(2026, 11, 1)
) -> dict:
    """Write a synthetic landing zone to `out`: `days` days of events ending the day before `end_date`.

    Funnel: impression (value null) -> click (value = dwell seconds) -> purchase (value = price), all of
    one (user, item) on the same UTC day, in that order. Items are only shown from the day after they were
    created. Returns a summary: events per type, users, items, new items, first and last day.
    """
    if users < 1 or items < 1 or days < 1:
        raise ValueError(f"users, items and days must be positive (got {users}, {items}, {days})")
    rng = np.random.default_rng(seed)
    n_topics = len(TOPICS)
    first_day = end_date - timedelta(days=days)
    window_start = _epoch_us(first_day)

    # Users: taste over topics, how often and how much they browse, how much price puts them off.
    taste = rng.dirichlet(np.full(n_topics, 0.3), users)
    activity = rng.beta(1.5, 4.0, users)
    per_visit = np.exp(rng.normal(1.8, 0.5, users))
    click_bias = rng.normal(0.0, 0.4, users)
    price_sensitivity = rng.uniform(0.2, 1.0, users)
    signup_days = days + rng.integers(0, 730, users)
    new_users = rng.random(users) < NEW_USER_SHARE
    signup_days[new_users] = rng.integers(1, days + 1, int(new_users.sum()))
    segment = np.searchsorted([0.15, 0.4], activity)

    item = _make_items(rng, items, window_start, days)
    titles, categories, texts = _item_texts(rng, item["main"], item["second"])

    # Who visits which day: a user is active only from the day of signing up.
    day_index = np.arange(days)[:, None]
    active = (rng.random((days, users)) < activity) & (day_index >= (days - signup_days)[None, :])
    visit_day, visit_user = np.nonzero(active)
    shown = 1 + rng.poisson(per_visit[visit_user])
    imp_day = np.repeat(visit_day, shown)
    imp_user = np.repeat(visit_user, shown)

    # What they are shown: a topic from their taste (or global popularity), then an item of it by popularity.
    membership = np.zeros((n_topics + 1, items))
    membership[item["main"], np.arange(items)] = 1.0
    has_second = item["second"] >= 0
    membership[item["second"][has_second], np.flatnonzero(has_second)] = 0.5
    membership[n_topics] = 1.0
    weights = membership * item["popularity"]
    taste_cdf = np.cumsum(taste, axis=1)
    topic = np.minimum((rng.random(imp_user.size)[:, None] > taste_cdf[imp_user]).sum(axis=1), n_topics - 1)
    rows = np.where(rng.random(imp_user.size) < POPULAR_SHARE, n_topics, topic)
    imp_item = np.empty(imp_user.size, dtype=np.int64)
    bounds = np.searchsorted(imp_day, np.arange(days + 1))
    for d in range(days):
        lo, hi = bounds[d], bounds[d + 1]
        eligible = item["created"] < window_start + d * DAY_US
        imp_item[lo:hi] = _sample_items(rng, weights, eligible, rows[lo:hi])

    # One impression per (user, item, day): the labels of an example are then unambiguous.
    key = (imp_day.astype(np.int64) * users + imp_user) * items + imp_item
    _, first = np.unique(key, return_index=True)
    first.sort()
    imp_day, imp_user, imp_item = imp_day[first], imp_user[first], imp_item[first]
    n_imp = imp_user.size
    imp_ts = window_start + imp_day.astype(np.int64) * DAY_US + rng.integers(0, IMPRESSION_HORIZON_US, n_imp)

    # Funnel: the affinity of user and item drives both clicks and purchases, with different noise.
    main_taste = taste[imp_user, item["main"][imp_item]]
    sec = item["second"][imp_item]
    affinity = main_taste + np.where(sec >= 0, 0.5 * taste[imp_user, np.maximum(sec, 0)], 0.0)
    quality = item["quality"][imp_item]
    click_logit = -3.9 + 4.0 * affinity + quality + click_bias[imp_user] + rng.normal(0.0, 0.5, n_imp)
    clicked = rng.random(n_imp) < _sigmoid(click_logit)
    dwell_s = np.round(np.clip(np.exp(rng.normal(3.0 + affinity, 0.5, n_imp)), 1.0, 600.0), 1)
    click_ts = imp_ts + rng.integers(SECOND_US, 300 * SECOND_US, n_imp)
    price = item["price"][imp_item]
    buy_logit = (
        -1.8
        + 2.5 * affinity
        + 0.5 * quality
        - price_sensitivity[imp_user] * np.log1p(price) * 0.6
        + rng.normal(0.0, 0.5, n_imp)
    )
    bought = clicked & (rng.random(n_imp) < _sigmoid(buy_logit))
    buy_ts = (
        click_ts + (dwell_s * SECOND_US).astype(np.int64) + rng.integers(SECOND_US, 300 * SECOND_US, n_imp)
    )

    kinds = ("impression", "click", "purchase")
    parts = [
        (np.arange(n_imp), imp_ts, np.full(n_imp, np.nan)),
        (np.flatnonzero(clicked), click_ts[clicked], dwell_s[clicked]),
        (np.flatnonzero(bought), buy_ts[bought], price[bought]),
    ]
    src = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    value = np.concatenate([p[2] for p in parts])
    kind = np.concatenate([np.full(p[0].size, k, dtype=np.int8) for k, p in enumerate(parts)])
    order = np.lexsort((kind, imp_item[src], imp_user[src], ts))
    src, ts, value, kind = src[order], ts[order], value[order], kind[order]

    n_events = ts.size
    event_ids = pc.binary_join_element_wise(
        "e", pc.utf8_lpad(pa.array(np.arange(n_events)).cast(pa.string()), 9, "0"), ""
    )
    user_ids, item_ids = _ids("u", users), _ids("i", items)
    events = pa.table(
        {
            "event_id": event_ids,
            "user_id": user_ids.take(pa.array(imp_user[src])),
            "item_id": item_ids.take(pa.array(imp_item[src])),
            "event_type": pa.array(kinds).take(pa.array(kind)),
            "value": pa.array(value, pa.float64(), mask=np.isnan(value)),
            "ts": pa.array(ts, pa.int64()).cast(TS),
        },
        schema=EVENTS_SCHEMA,
    )
    items_table = pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "categories": categories,
            "text": texts,
            "created_at": pa.array(item["created"], pa.int64()).cast(TS),
        },
        schema=ITEMS_SCHEMA,
    )
    users_table = pa.table(
        {
            "user_id": user_ids,
            "segment": pa.array(SEGMENTS).take(pa.array(segment)),
            "signup_days": pa.array(signup_days, pa.int32()),
        }
    )
    write_landing(Path(out), events, items_table, users_table)
    counts = np.bincount(kind, minlength=len(kinds))
    return {
        "events": {k: int(c) for k, c in zip(kinds, counts, strict=True)},
        "users": users,
        "items": items,
        "new_items": int((item["created"] >= window_start).sum()),
        "first_day": first_day.isoformat(),
        "last_day": (end_date - timedelta(days=1)).isoformat(),
    }
