"""Point-in-time features and multi-task labels, as pure functions from DataFrames to DataFrames.

The rule that every function here keeps: a feature of a (user or item, day) row uses only events strictly
before that day. Labels of a (user, item, day) example come from the events of that same day. Together with
reading only events before the run date, no event of the future can reach a feature or a label. Multiclass
labels are categories: of the example's item (static catalogue data), or of the user's history items strictly
before the day (the `u_hist` the features use), so they keep the same rule.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from nightrec import schema as S
from nightrec.config import Config, LabelRule, TaskConfig


def with_day(events: DataFrame) -> DataFrame:
    """Add `day`, the UTC calendar day of `ts` (the Spark session runs in UTC)."""
    return events.withColumn(S.DAY, F.to_date("ts"))


def _day_num(col: str = S.DAY) -> Column:
    """Days since 1970-01-01: an integer to order range windows by."""
    return F.unix_date(F.col(col))


def _matches(rule: LabelRule) -> Column:
    cond = F.col("event_type").isin(rule.event_types)
    if rule.min_value is not None:
        cond = cond & (F.col("value") >= rule.min_value)
    if rule.max_value is not None:
        cond = cond & (F.col("value") <= rule.max_value)
    return F.coalesce(cond, F.lit(False))


def _label(task: TaskConfig) -> Column:
    match = _matches(task.label)
    if task.has_binary_label:
        return F.max(F.when(match, 1.0).otherwise(0.0)).alias(S.label_column(task.name))
    return F.max(F.when(match, F.col("value"))).cast("double").alias(S.label_column(task.name))


def event_tasks(tasks: Sequence[TaskConfig]) -> list[TaskConfig]:
    """The binary and regression tasks: labelled by the events of the example's own (user, item, day)."""
    return [t for t in tasks if t.label.source == "events"]


def exposures(events: DataFrame, exposure_types: Sequence[str], tasks: Sequence[TaskConfig]) -> DataFrame:
    """One row per (user, item, day) with an exposure event, labelled for every event task by that day's events.

    Multiclass (category) tasks are labelled later, by `category_labels`, once the features are joined.
    """
    exposed = F.max(F.col("event_type").isin(list(exposure_types)).cast("int")).alias("_exposed")
    grouped = events.groupBy(S.USER_ID, S.ITEM_ID, S.DAY).agg(
        exposed, *[_label(t) for t in event_tasks(tasks)]
    )
    return grouped.where("_exposed = 1").drop("_exposed")


def available_items(items: DataFrame) -> DataFrame:
    """(item_id, avail_day): an item can be shown from the day after the day it was created."""
    return items.select(S.ITEM_ID, F.date_add(F.to_date("created_at"), 1).alias("avail_day"))


def sample_negatives(
    positives: DataFrame,
    events: DataFrame,
    items: DataFrame,
    per_positive: int,
    seed: int,
    tasks: Sequence[TaskConfig],
) -> DataFrame:
    """Items the user had not interacted with as of the example's day, `per_positive` draws per exposure.

    Draws are uniform over the items available that day and reproducible: a hash of (user, day, draw, seed)
    picks the item, so the result does not depend on Spark's partitioning. Collisions with items the user
    has touched on or before that day are dropped rather than redrawn (a slightly smaller sample, no bias
    towards popular items).
    """
    if per_positive == 0:
        return positives.limit(0)
    avail = available_items(items)
    ordered = avail.withColumn("_idx", F.row_number().over(Window.orderBy("avail_day", S.ITEM_ID)) - 1)
    per_day = sorted(
        (r["avail_day"], r["n"]) for r in avail.groupBy("avail_day").agg(F.count("*").alias("n")).collect()
    )
    cum_days, running, cumulative = [d for d, _ in per_day], 0, []
    for _, n in per_day:
        running += n
        cumulative.append(running)
    spark = positives.sparkSession
    example_days = [r[S.DAY] for r in positives.select(S.DAY).distinct().collect()]
    counts = [(d, cumulative[i - 1]) for d in example_days if (i := bisect.bisect_right(cum_days, d)) > 0]
    if not counts:
        return positives.limit(0)
    day_counts = spark.createDataFrame(counts, f"{S.DAY} date, _n_avail long")

    draws = (
        positives.groupBy(S.USER_ID, S.DAY)
        .agg(F.count("*").alias("_k"))
        .join(F.broadcast(day_counts), S.DAY)
        .withColumn("_j", F.explode(F.sequence(F.lit(1), F.col("_k") * per_positive)))
        .withColumn("_idx", F.pmod(F.xxhash64(S.USER_ID, S.DAY, "_j", F.lit(seed)), F.col("_n_avail")))
        .join(ordered.select("_idx", S.ITEM_ID), "_idx")
        .select(S.USER_ID, S.ITEM_ID, S.DAY)
        .dropDuplicates()
    )
    touched = events.groupBy(S.USER_ID, S.ITEM_ID).agg(F.min(S.DAY).alias("_first_day"))
    negatives = (
        draws.join(touched, [S.USER_ID, S.ITEM_ID], "left")
        .where(F.col("_first_day").isNull() | (F.col("_first_day") > F.col(S.DAY)))
        .drop("_first_day")
    )
    labels = [
        F.lit(0.0 if t.has_binary_label else None).cast("double").alias(S.label_column(t.name))
        for t in event_tasks(tasks)
    ]
    return negatives.select(S.USER_ID, S.ITEM_ID, S.DAY, *labels)


def _windowed_counts(
    daily: DataFrame, keys: DataFrame, key: str, windows: Sequence[int], name: callable
) -> DataFrame:
    """For each (key, day) in `keys`: sums of the daily counts over the `w` days strictly before `day`.

    The keys are unioned into the daily counts with zero counts, so that one range window per key computes
    every requested day, including days without any event.
    """
    stacked = (
        daily.unionByName(keys.select(key, S.DAY).distinct().withColumn("n", F.lit(0).cast("long")))
        .groupBy(key, S.DAY)
        .agg(F.sum("n").alias("n"))
        .withColumn("_d", _day_num())
    )
    by_day = Window.partitionBy(key).orderBy("_d")
    cols = [
        F.coalesce(F.sum("n").over(by_day.rangeBetween(-w, -1)), F.lit(0)).cast("double").alias(name(w))
        for w in windows
    ]
    return keys.select(key, S.DAY).distinct().join(stacked.select(key, S.DAY, *cols), [key, S.DAY])


def value_stats(
    events: DataFrame, keys: DataFrame, key: str, seen_types: Sequence[str], names: tuple[str, str]
) -> DataFrame:
    """(mean, count) of the values of the key's events of the seen types on the days strictly before each key
    day; mean 0 where there is none. What a bias model knows (a user's and an item's average rating), as of
    the example's day."""
    daily = (
        events.where(F.col("event_type").isin(list(seen_types)) & F.col("value").isNotNull())
        .groupBy(key, S.DAY)
        .agg(F.sum("value").alias("s"), F.count("*").alias("n"))
    )
    zeros = (
        keys.select(key, S.DAY)
        .distinct()
        .select(key, S.DAY, F.lit(0.0).alias("s"), F.lit(0).cast("long").alias("n"))
    )
    stacked = (
        daily.unionByName(zeros)
        .groupBy(key, S.DAY)
        .agg(F.sum("s").alias("s"), F.sum("n").alias("n"))
        .withColumn("_d", _day_num())
    )
    before = Window.partitionBy(key).orderBy("_d").rangeBetween(Window.unboundedPreceding, -1)
    total, count = (
        F.coalesce(F.sum("s").over(before), F.lit(0.0)),
        F.coalesce(F.sum("n").over(before), F.lit(0)),
    )
    mean, n = names
    return (
        keys.select(key, S.DAY)
        .distinct()
        .join(
            stacked.select(
                key,
                S.DAY,
                F.when(count > 0, total / count).otherwise(0.0).cast("double").alias(mean),
                count.cast("double").alias(n),
            ),
            [key, S.DAY],
        )
    )


def user_activity(events: DataFrame, keys: DataFrame, windows: Sequence[int]) -> DataFrame:
    """u_cnt_<w>d: the user's events of any type in the w days before each key day."""
    daily = events.groupBy(S.USER_ID, S.DAY).agg(F.count("*").alias("n"))
    return _windowed_counts(daily, keys, S.USER_ID, windows, S.user_count_column)


def user_history(events: DataFrame, keys: DataFrame, seen_types: Sequence[str], length: int) -> DataFrame:
    """u_hist: the user's last `length` items (of the seen event types) before each key day, newest last.

    An as-of join: after each day with events, the history up to and including that day is known; a key
    row takes the last such history from a strictly earlier day. Ordering key rows before event rows of the
    same day is what makes "strictly earlier" hold.
    """
    per_day = (
        events.where(F.col("event_type").isin(list(seen_types)))
        .groupBy(S.USER_ID, S.DAY)
        .agg(F.sort_array(F.collect_list(F.struct("ts", S.ITEM_ID))).alias("_evs"))
        .withColumn("_items", F.transform("_evs", lambda e: e[S.ITEM_ID]))
        .withColumn("_items", F.slice("_items", F.greatest(F.size("_items") - length + 1, F.lit(1)), length))
        .withColumn("_d", _day_num())
    )
    upto = Window.partitionBy(S.USER_ID).orderBy("_d").rowsBetween(-length + 1, 0)
    cumulative = per_day.select(
        S.USER_ID,
        S.DAY,
        "_d",
        F.lit(1).alias("_is_event"),
        F.flatten(F.collect_list("_items").over(upto)).alias("_hist"),
    )
    key_rows = (
        keys.select(S.USER_ID, S.DAY)
        .distinct()
        .select(
            S.USER_ID,
            S.DAY,
            _day_num().alias("_d"),
            F.lit(0).alias("_is_event"),
            F.lit(None).cast("array<string>").alias("_hist"),
        )
    )
    before = (
        Window.partitionBy(S.USER_ID).orderBy("_d", "_is_event").rowsBetween(Window.unboundedPreceding, -1)
    )
    asof = F.last("_hist", ignorenulls=True).over(before)
    last_n = F.coalesce(
        F.slice(F.col("_prev"), F.greatest(F.size("_prev") - length + 1, F.lit(1)), length),
        F.array().cast("array<string>"),
    )
    return (
        cumulative.unionByName(key_rows)
        .withColumn("_prev", asof)
        .where("_is_event = 0")
        .select(S.USER_ID, S.DAY, last_n.alias(S.HISTORY))
    )


def item_features(events: DataFrame, items: DataFrame, keys: DataFrame, cfg: Config) -> DataFrame:
    """i_pop_<w>d (engagement events in the w days before), i_age_days, i_categories per (item, day), and
    with `features.value_stats` i_val_mean, i_val_n."""
    seen_types, windows = cfg.features.seen_event_types, cfg.features.windows
    daily = (
        events.where(F.col("event_type").isin(list(seen_types)))
        .groupBy(S.ITEM_ID, S.DAY)
        .agg(F.count("*").alias("n"))
    )
    pop = _windowed_counts(daily, keys, S.ITEM_ID, windows, S.item_pop_column)
    meta = items.select(
        S.ITEM_ID,
        F.to_date("created_at").alias("_created"),
        F.coalesce(F.col("categories"), F.array().cast("array<string>")).alias(S.CATEGORIES),
    )
    out = pop.join(meta, S.ITEM_ID, "left").select(
        S.ITEM_ID,
        S.DAY,
        *[S.item_pop_column(w) for w in windows],
        F.greatest(F.coalesce(F.datediff(S.DAY, "_created"), F.lit(0)), F.lit(0))
        .cast("double")
        .alias(S.ITEM_AGE),
        F.coalesce(F.col(S.CATEGORIES), F.array().cast("array<string>")).alias(S.CATEGORIES),
    )
    if cfg.features.value_stats:
        names = (S.ITEM_VALUE_MEAN, S.ITEM_VALUE_COUNT)
        out = out.join(value_stats(events, keys, S.ITEM_ID, seen_types, names), [S.ITEM_ID, S.DAY])
    return out


def user_features(events: DataFrame, keys: DataFrame, cfg: Config) -> DataFrame:
    f = cfg.features
    activity = user_activity(events, keys, f.windows)
    history = user_history(events, keys, f.seen_event_types, f.history_length)
    out = activity.join(history, [S.USER_ID, S.DAY])
    if f.value_stats:
        names = (S.USER_VALUE_MEAN, S.USER_VALUE_COUNT)
        out = out.join(value_stats(events, keys, S.USER_ID, f.seen_event_types, names), [S.USER_ID, S.DAY])
    return out


def with_history_categories(users: DataFrame, items: DataFrame) -> DataFrame:
    """`users` (one row per user and day, with `u_hist`) plus `_hist_categories`: the categories of the
    history's items, in history order, with repeats.

    Repeats are the point: a user who watched five comedies and one drama gets a 5:1 target distribution.
    Items missing from the catalogue or without categories contribute nothing; an empty history gives [].
    One pass (explode, join, regroup) rather than a join back, so the user features are computed once.
    """
    empty = F.array().cast("array<string>")
    cats = items.select(F.col(S.ITEM_ID).alias("_hist_item"), F.col("categories").alias("_cats"))
    others = [c for c in users.columns if c not in (S.USER_ID, S.DAY)]
    by_position = F.sort_array(F.collect_list(F.struct("_pos", "_cats")))
    return (
        users.select("*", F.posexplode_outer(S.HISTORY).alias("_pos", "_hist_item"))
        .join(cats, "_hist_item", "left")
        .groupBy(S.USER_ID, S.DAY)
        .agg(
            *[F.first(c).alias(c) for c in others],  # one value per (user, day): repeated by the explode
            F.flatten(F.transform(by_position, lambda p: F.coalesce(p["_cats"], empty))).alias(
                "_hist_categories"
            ),
        )
    )


def category_labels(examples: DataFrame, tasks: Sequence[TaskConfig]) -> DataFrame:
    """Set `label_<task>` (array<string>) of every multiclass task from the joined features, then drop the
    helper column: item_categories is the example item's `i_categories`, user_categories the user's
    `_hist_categories` (`with_history_categories`). Both are point-in-time by construction.
    """
    for t in tasks:
        if t.label.source != "events":
            source = S.CATEGORIES if t.label.source == "item_categories" else "_hist_categories"
            examples = examples.withColumn(S.label_column(t.name), F.col(source))
    return examples.drop("_hist_categories")


def labelled_pairs(events: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """The (user, item, day) examples with their labels, before any feature: exposures and sampled negatives."""
    tasks = cfg.tasks
    positives = exposures(events, cfg.features.exposure_event_types, tasks)
    negatives = sample_negatives(
        positives, events, items, cfg.features.negatives_per_positive, cfg.model.seed, tasks
    )
    return positives.unionByName(negatives)


def training_examples(events: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """Labelled examples with their point-in-time user and item features."""
    return with_example_features(labelled_pairs(events, items, cfg), events, items, cfg)


def with_example_features(labelled: DataFrame, events: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """`labelled_pairs` joined with the user and item features as of each example's day.

    `labelled` feeds six branches of the plan (the keys of each feature, the final join): a caller that
    writes the result once should cache it first (`jobs.feature_job.write_features` does), or Spark
    recomputes the exposures and the negative sampling for every branch.
    """
    tasks = cfg.tasks
    users = user_features(events, labelled, cfg)
    if any(t.label.source == "user_categories" for t in tasks):
        users = with_history_categories(users, items)
    item_feats = item_features(events, items, labelled, cfg)
    examples = labelled.join(users, [S.USER_ID, S.DAY]).join(item_feats, [S.ITEM_ID, S.DAY])
    return category_labels(examples, tasks)


def _item_text(items: DataFrame) -> Column:
    """The landing zone's optional `text` (description) column, or a null string column in its place."""
    text = F.col(S.TEXT) if S.TEXT in items.columns else F.lit(None)
    return text.cast("string").alias(S.TEXT)


def scoring_inputs(
    events: DataFrame, items: DataFrame, cfg: Config, run_date: date
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The users, items and already-seen pairs as of the run date, for scoring.

    Users: everyone with an event in the window. Items: everything created before the run date, with their
    `title` and `text` (the landing zone's optional description column; null when it has none), which the
    item text encoder reads.
    """
    at = F.lit(run_date).cast("date").alias(S.DAY)
    user_keys = events.select(S.USER_ID).distinct().select(S.USER_ID, at)
    catalogue = items.where(F.col("created_at") < F.lit(run_date).cast("timestamp"))
    item_keys = catalogue.select(S.ITEM_ID).distinct().select(S.ITEM_ID, at)
    users = user_features(events, user_keys, cfg).drop(S.DAY)
    item_feats = (
        item_features(events, catalogue, item_keys, cfg)
        .join(catalogue.select(S.ITEM_ID, S.TITLE, _item_text(catalogue)), S.ITEM_ID)
        .drop(S.DAY)
    )
    seen = (
        events.where(F.col("event_type").isin(list(cfg.features.seen_event_types)))
        .select(S.USER_ID, S.ITEM_ID)
        .distinct()
    )
    return users, item_feats, seen
