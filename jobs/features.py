"""Point-in-time features and multi-task labels, as pure functions from DataFrames to DataFrames.

The rules that every function here keeps. An example is a (user, item, day) with labels from the events of
that pair on that day; its moment (`AS_OF`) is the time of the pair's first event of the day (or the day's
midnight with `features.user_features_as_of = "day"`, either less `features.user_history_gap_minutes`). A
user feature of an example uses only the user's events strictly before that moment; an item feature uses only
events strictly before the example's day. Every event that labels an example is at or after its moment, so no
feature holds a label, and together with reading only events before the run date no event of the future
reaches a feature or a label. Multiclass labels are categories: of the example's item (static catalogue
data), or of the user's history items before the moment (the `u_hist` the features use), so they keep the
same rule.

Why user features as of the moment rather than the day: users often do most of what they ever do in their
first session (on MovieLens 1M users 1-2999, 78% of the rated examples of a night's training data fell on a
day the user had no earlier rating), so as-of-the-day user features left most examples without any history,
while every user the night's top-K is judged on has one. As of the moment, the 50th rating of a first session
sees the 49 before it. Scoring takes the moment to be the run date's midnight: the same rule. Which rule
ranks better is a property of the data, so it is a setting: MovieLens 100K's validation nights chose the
moment, MovieLens 1M's the day (docs/backtest-results.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import date
from typing import Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from nightrec import schema as S
from nightrec.config import Config, LabelRule, TaskConfig

AS_OF = "_as_of"  # the moment (timestamp) a user feature row is as of: only events strictly before it count


def with_day(events: DataFrame) -> DataFrame:
    """Add `day`, the UTC calendar day of `ts` (the Spark session runs in UTC)."""
    return events.withColumn(S.DAY, F.to_date("ts"))


def _time_axis(at: str) -> tuple[str, Column, int]:
    """How the key column `at` places events in time: the events' matching column (their day for `S.DAY`,
    item features; their timestamp for `AS_OF`, user features), an integer to order range windows by (days
    or seconds), and its units per day (the length of a window of w days)."""
    if at == S.DAY:
        return S.DAY, F.unix_date(F.col(at)), 1
    return "ts", F.unix_seconds(F.col(at)), 86_400


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


def exposures(
    events: DataFrame,
    exposure_types: Sequence[str],
    tasks: Sequence[TaskConfig],
    as_of: Literal["moment", "day"] = "moment",
    gap_minutes: int = 0,
) -> DataFrame:
    """One row per (user, item, day) with an exposure event, labelled for every event task by that day's events,
    with its moment `AS_OF`: the pair's first event of the day, of any type (so that no event that labels it
    comes before it); with `as_of = "day"`, the day's midnight (`features.user_features_as_of`); either less
    `gap_minutes` (`features.user_history_gap_minutes`).

    Multiclass (category) tasks are labelled later, by `category_labels`, once the features are joined.
    """
    exposed = F.max(F.col("event_type").isin(list(exposure_types)).cast("int")).alias("_exposed")
    moment = F.min("ts") if as_of == "moment" else F.min(S.DAY).cast("timestamp")
    grouped = events.groupBy(S.USER_ID, S.ITEM_ID, S.DAY).agg(
        exposed,
        (moment - F.make_dt_interval(mins=F.lit(gap_minutes))).alias(AS_OF),
        *[_label(t) for t in event_tasks(tasks)],
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
    towards popular items). Each negative takes the moment of one of the user's exposures of that day (the
    k-th group of `per_positive` draws, the k-th exposure in time), so its user features are those of a
    real exposure: negatives and positives of a day cannot be told apart by when their features were taken.
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
        .agg(F.count("*").alias("_k"), F.sort_array(F.collect_list(AS_OF)).alias("_moments"))
        .join(F.broadcast(day_counts), S.DAY)
        .withColumn("_j", F.explode(F.sequence(F.lit(1), F.col("_k") * per_positive)))
        .withColumn("_idx", F.pmod(F.xxhash64(S.USER_ID, S.DAY, "_j", F.lit(seed)), F.col("_n_avail")))
        .withColumn(AS_OF, F.element_at("_moments", ((F.col("_j") - 1) / per_positive).cast("int") + 1))
        .join(ordered.select("_idx", S.ITEM_ID), "_idx")
        .groupBy(S.USER_ID, S.ITEM_ID, S.DAY)
        .agg(F.min(AS_OF).alias(AS_OF))  # an item drawn twice: one negative, at a moment not left to chance
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
    return negatives.select(S.USER_ID, S.ITEM_ID, S.DAY, AS_OF, *labels)


def _windowed_counts(
    counts: DataFrame, keys: DataFrame, key: str, at: str, windows: Sequence[int], name: callable
) -> DataFrame:
    """For each (key, at) in `keys`: sums of the counts `n` of (key, at) over the `w` days strictly before `at`
    (`at` is `S.DAY`, or `AS_OF` for a moment: then the w * 24 hours before it).

    The keys are unioned into the counts with zero counts, so that one range window per key computes every
    requested day or moment, including those without any event.
    """
    _, order, span = _time_axis(at)
    stacked = (
        counts.unionByName(keys.select(key, at).distinct().withColumn("n", F.lit(0).cast("long")))
        .groupBy(key, at)
        .agg(F.sum("n").alias("n"))
        .withColumn("_d", order)
    )
    ordered = Window.partitionBy(key).orderBy("_d")
    cols = [
        F.coalesce(F.sum("n").over(ordered.rangeBetween(-w * span, -1)), F.lit(0))
        .cast("double")
        .alias(name(w))
        for w in windows
    ]
    return keys.select(key, at).distinct().join(stacked.select(key, at, *cols), [key, at])


def value_stats(
    events: DataFrame, keys: DataFrame, key: str, at: str, seen_types: Sequence[str], names: tuple[str, str]
) -> DataFrame:
    """(mean, count) of the values of the key's events of the seen types strictly before each key's day or
    moment (`at`); mean 0 where there is none. What a bias model knows (a user's and an item's average
    rating), as of the example."""
    event_time, order, _ = _time_axis(at)
    daily = (
        events.where(F.col("event_type").isin(list(seen_types)) & F.col("value").isNotNull())
        .groupBy(key, F.col(event_time).alias(at))
        .agg(F.sum("value").alias("s"), F.count("*").alias("n"))
    )
    zeros = (
        keys.select(key, at)
        .distinct()
        .select(key, at, F.lit(0.0).alias("s"), F.lit(0).cast("long").alias("n"))
    )
    stacked = (
        daily.unionByName(zeros)
        .groupBy(key, at)
        .agg(F.sum("s").alias("s"), F.sum("n").alias("n"))
        .withColumn("_d", order)
    )
    before = Window.partitionBy(key).orderBy("_d").rangeBetween(Window.unboundedPreceding, -1)
    total, count = (
        F.coalesce(F.sum("s").over(before), F.lit(0.0)),
        F.coalesce(F.sum("n").over(before), F.lit(0)),
    )
    mean, n = names
    return (
        keys.select(key, at)
        .distinct()
        .join(
            stacked.select(
                key,
                at,
                F.when(count > 0, total / count).otherwise(0.0).cast("double").alias(mean),
                count.cast("double").alias(n),
            ),
            [key, at],
        )
    )


def user_activity(events: DataFrame, keys: DataFrame, windows: Sequence[int]) -> DataFrame:
    """u_cnt_<w>d: the user's events of any type in the w * 24 hours before each key moment."""
    counts = events.groupBy(S.USER_ID, F.col("ts").alias(AS_OF)).agg(F.count("*").alias("n"))
    return _windowed_counts(counts, keys, S.USER_ID, AS_OF, windows, S.user_count_column)


def user_history(events: DataFrame, keys: DataFrame, seen_types: Sequence[str], length: int) -> DataFrame:
    """u_hist: the user's last `length` items (of the seen event types) before each key moment, newest last.

    An as-of join: after each moment with events, the history up to and including that moment is known; a
    key row takes the last such history from a strictly earlier moment. Ordering key rows before event rows
    of the same moment is what makes "strictly earlier" hold.
    """
    _, order, _ = _time_axis(AS_OF)
    per_moment = (
        events.where(F.col("event_type").isin(list(seen_types)))
        .groupBy(S.USER_ID, F.col("ts").alias(AS_OF))
        .agg(F.sort_array(F.collect_list(S.ITEM_ID)).alias("_items"))  # same second: in item order
        .withColumn("_items", F.slice("_items", F.greatest(F.size("_items") - length + 1, F.lit(1)), length))
        .withColumn("_d", order)
    )
    upto = Window.partitionBy(S.USER_ID).orderBy("_d").rowsBetween(-length + 1, 0)
    cumulative = per_moment.select(
        S.USER_ID,
        AS_OF,
        "_d",
        F.lit(1).alias("_is_event"),
        F.flatten(F.collect_list("_items").over(upto)).alias("_hist"),
    )
    key_rows = (
        keys.select(S.USER_ID, AS_OF)
        .distinct()
        .select(
            S.USER_ID,
            AS_OF,
            order.alias("_d"),
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
        .select(S.USER_ID, AS_OF, last_n.alias(S.HISTORY))
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
    pop = _windowed_counts(daily, keys, S.ITEM_ID, S.DAY, windows, S.item_pop_column)
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
        out = out.join(value_stats(events, keys, S.ITEM_ID, S.DAY, seen_types, names), [S.ITEM_ID, S.DAY])
    return out


def user_value_residuals(events: DataFrame, keys: DataFrame, seen_types: Sequence[str]) -> DataFrame:
    """u_res_mean, u_res_n per (user, `AS_OF`) of `keys`: the mean and count of the user's earlier values,
    each less its item's mean value before that event's day (events of items without one are left out).

    Why: a user's raw mean rating mixes their generosity with the quality of what they chose; the residual
    is the user term of a user-plus-item bias model, which a like task needs and a network does not easily
    recover from the two raw means. Every input is as of its own event, so the feature is point-in-time.
    """
    rated = events.where(F.col("event_type").isin(list(seen_types)) & F.col("value").isNotNull())
    item_means = value_stats(
        events, rated.select(S.ITEM_ID, S.DAY), S.ITEM_ID, S.DAY, seen_types, ("_i_mean", "_i_n")
    )
    residuals = rated.join(item_means.where("_i_n > 0"), [S.ITEM_ID, S.DAY]).select(
        S.USER_ID, "ts", "event_type", (F.col("value") - F.col("_i_mean")).alias("value")
    )  # event_type kept only because value_stats takes events of the seen types, as these all are
    names = (S.USER_RESIDUAL_MEAN, S.USER_RESIDUAL_COUNT)
    return value_stats(residuals, keys, S.USER_ID, AS_OF, seen_types, names)


def user_features(events: DataFrame, keys: DataFrame, cfg: Config) -> DataFrame:
    """u_cnt_<w>d, u_hist, with `features.value_stats` u_val_mean, u_val_n, and with
    `features.value_residuals` u_res_mean, u_res_n per (user, `AS_OF`) of `keys`."""
    f = cfg.features
    activity = user_activity(events, keys, f.windows)
    history = user_history(events, keys, f.seen_event_types, f.history_length)
    out = activity.join(history, [S.USER_ID, AS_OF])
    if f.value_stats:
        names = (S.USER_VALUE_MEAN, S.USER_VALUE_COUNT)
        stats = value_stats(events, keys, S.USER_ID, AS_OF, f.seen_event_types, names)
        out = out.join(stats, [S.USER_ID, AS_OF])
    if f.value_residuals:
        out = out.join(user_value_residuals(events, keys, f.seen_event_types), [S.USER_ID, AS_OF])
    return out


def with_history_categories(users: DataFrame, items: DataFrame) -> DataFrame:
    """`users` (one row per user and moment, with `u_hist`) plus `_hist_categories`: the categories of the
    history's items, in history order, with repeats.

    Repeats are the point: a user who watched five comedies and one drama gets a 5:1 target distribution.
    Items missing from the catalogue or without categories contribute nothing; an empty history gives [].
    One pass (explode, join, regroup) rather than a join back, so the user features are computed once.
    """
    empty = F.array().cast("array<string>")
    cats = items.select(F.col(S.ITEM_ID).alias("_hist_item"), F.col("categories").alias("_cats"))
    others = [c for c in users.columns if c not in (S.USER_ID, AS_OF)]
    by_position = F.sort_array(F.collect_list(F.struct("_pos", "_cats")))
    return (
        users.select("*", F.posexplode_outer(S.HISTORY).alias("_pos", "_hist_item"))
        .join(cats, "_hist_item", "left")
        .groupBy(S.USER_ID, AS_OF)
        .agg(
            *[F.first(c).alias(c) for c in others],  # one value per (user, moment): repeated by the explode
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
    tasks, f = cfg.tasks, cfg.features
    positives = exposures(
        events, f.exposure_event_types, tasks, f.user_features_as_of, f.user_history_gap_minutes
    )
    negatives = sample_negatives(positives, events, items, f.negatives_per_positive, cfg.model.seed, tasks)
    return positives.unionByName(negatives)


def training_examples(events: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """Labelled examples with their point-in-time user and item features."""
    return with_example_features(labelled_pairs(events, items, cfg), events, items, cfg)


def with_example_features(labelled: DataFrame, events: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """`labelled_pairs` joined with the user features as of each example's moment and the item features as of
    its day; the moment itself is dropped (the day stays: it splits training from validation).

    `labelled` feeds six branches of the plan (the keys of each feature, the final join): a caller that
    writes the result once should cache it first (`jobs.feature_job.write_features` does), or Spark
    recomputes the exposures and the negative sampling for every branch.
    """
    tasks = cfg.tasks
    users = user_features(events, labelled, cfg)
    if any(t.label.source == "user_categories" for t in tasks):
        users = with_history_categories(users, items)
    item_feats = item_features(events, items, labelled, cfg)
    examples = labelled.join(users, [S.USER_ID, AS_OF]).join(item_feats, [S.ITEM_ID, S.DAY])
    return category_labels(examples, tasks).drop(AS_OF)


def _item_text(items: DataFrame) -> Column:
    """The landing zone's optional `text` (description) column, or a null string column in its place."""
    text = F.col(S.TEXT) if S.TEXT in items.columns else F.lit(None)
    return text.cast("string").alias(S.TEXT)


def scoring_inputs(
    events: DataFrame, items: DataFrame, cfg: Config, run_date: date
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """The users, items and already-seen pairs as of the run date, for scoring.

    Users: everyone with an event in the window, as of the run date's first moment. Items: everything created
    before the run date, with their
    `title` and `text` (the landing zone's optional description column; null when it has none), which the
    item text encoder reads.
    """
    at = F.lit(run_date).cast("date").alias(S.DAY)
    user_keys = events.select(S.USER_ID).distinct().select(S.USER_ID, at.cast("timestamp").alias(AS_OF))
    catalogue = items.where(F.col("created_at") < F.lit(run_date).cast("timestamp"))
    item_keys = catalogue.select(S.ITEM_ID).distinct().select(S.ITEM_ID, at)
    users = user_features(events, user_keys, cfg).drop(AS_OF)
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
