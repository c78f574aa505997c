"""The seed recipes: every configs/recipes/*.toml is a valid config for MovieLens, with its own page in docs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from nightrec.config import load_config

RECIPES = sorted((REPO / "configs" / "recipes").glob("*.toml"))
DOCS = REPO / "docs" / "recipes"


def test_the_four_seed_designs_are_there():
    assert [p.stem for p in RECIPES] == [
        "click_conversion",
        "engage_profile",
        "interest_content",
        "rating_genre",
    ]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_runs_on_the_movielens_landing(path: Path):
    cfg = load_config(path)
    base = load_config(REPO / "configs" / "movielens.toml")
    assert cfg.data.landing == base.data.landing  # what `nightrec import movielens` wrote
    assert cfg.features.exposure_event_types == base.features.exposure_event_types
    assert cfg.validation.event_types == base.validation.event_types
    own = f"var/recipes/{path.stem}/"
    assert cfg.data.workdir.startswith(own) and cfg.data.warehouse.startswith(own)
    assert len(cfg.tasks) >= 2, "a multi-task recipe"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_page_shows_the_config_as_it_is(path: Path):
    """The page's TOML excerpt is the recipe's: every task whole, and the model and scoring keys it quotes."""
    page = (DOCS / f"{path.stem}.md").read_text()
    assert "Measured:" in page and f"configs/recipes/{path.stem}.toml" in page
    assert f"nightrec run --date 1998-03-01 --config configs/recipes/{path.stem}.toml" in page
    excerpt = tomllib.loads(re.search(r"```toml\n(.*?)```", page, re.S).group(1))
    recipe = tomllib.loads(path.read_text())
    assert excerpt["tasks"] == recipe["tasks"]
    for section in ("model", "scoring"):
        for key, value in excerpt.get(section, {}).items():
            assert recipe[section][key] == value, f"{section}.{key}"
    assert f"({path.stem}.md)" in (DOCS / "README.md").read_text()
