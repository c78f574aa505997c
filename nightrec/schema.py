"""Names shared by the feature job (jobs/) and the model (model/): the contract of the run directory.

The feature job writes, under `<run_dir>/features/`:

- `examples/`: one row per (user, item, day) training example, with
  `user_id`, `item_id` (string), `day` (date), one `label_<task>` per task, and the user and item features
  below: user features from the user's events strictly before the example's moment (the pair's first event
  of that day), item features from events strictly before `day` (jobs/features.py). Labels by task type:
  binary and retrieval: double 0/1; regression: double, the matching event's value, null where the example has no such
  event; multiclass: array<string> of categories, a bag with repeats that the model turns into a target
  distribution over the category vocabulary (empty: no label, the example is masked out for that task).
  A multiclass label's source is item_categories (the example item's categories, = `i_categories`) or
  user_categories (the categories of the `u_hist` items, in history order, with repeats: strictly before
  the example's moment, like every user feature).
- `users/`: one row per user known at the run date: `user_id` plus the user features as of the run date.
- `items/`: one row per item available at the run date: `item_id`, `title` (string), `text` (string, the
  item's description; null when the landing zone has none) plus the item features. Title and text are the
  input of the item text encoder (model/text_encoder.py).
- `seen/`: (`user_id`, `item_id`) pairs the user interacted with before the run date (never recommended).

Feature columns follow a naming convention so that the model needs no list of them:
- `u_*` numeric: user dense features (activity counts over windows; with `features.value_stats`, the mean
  and count of the values of the user's earlier events of the seen types: u_val_mean, u_val_n; with
  `features.value_residuals`, the same of each value less its item's mean before that event's day:
  u_res_mean, u_res_n);
- `i_*` numeric: item dense features (popularity over windows, age in days; with `features.value_stats`,
  i_val_mean and i_val_n, the same over the item's earlier events);
- `u_hist`: array<string>, the user's most recent items, oldest first, newest last;
- `i_categories`: array<string>, the item's categories.
"""

EXAMPLES = "examples"
USERS = "users"
ITEMS = "items"
SEEN = "seen"

USER_ID = "user_id"
ITEM_ID = "item_id"
DAY = "day"
HISTORY = "u_hist"
CATEGORIES = "i_categories"
TITLE = "title"
TEXT = "text"
ITEM_AGE = "i_age_days"
# features.value_stats: mean and count of the values (ratings) of the user's / item's earlier events
USER_VALUE_MEAN, USER_VALUE_COUNT = "u_val_mean", "u_val_n"
ITEM_VALUE_MEAN, ITEM_VALUE_COUNT = "i_val_mean", "i_val_n"
# features.value_residuals: mean and count of (value - the item's mean value before that event's day)
USER_RESIDUAL_MEAN, USER_RESIDUAL_COUNT = "u_res_mean", "u_res_n"

LABEL_PREFIX = "label_"
USER_PREFIX = "u_"
ITEM_PREFIX = "i_"


def label_column(task: str) -> str:
    return f"{LABEL_PREFIX}{task}"


def user_count_column(window_days: int) -> str:
    return f"u_cnt_{window_days}d"


def item_pop_column(window_days: int) -> str:
    return f"i_pop_{window_days}d"


def probability_column(task: str) -> str:
    """Column of the published table holding the task's predicted probability (or value)."""
    return f"p_{task}"
