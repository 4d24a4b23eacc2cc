"""Settings of the text rerank (late interaction z-mixed with the dense score): the small family
declared before measuring, and the default chosen from it by 2-fold cross-validation over queries
(``rerank eval --cv``; the numbers are in the README, "Quality").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np


@dataclass(frozen=True)
class TextRerankSettings:
    """final_i = z(dense_i) + lam·z(sim_i); sim is MaxSim (``tau=None``) or the τ-softmax pooled
    similarity, query tokens weighted by IDF (``idf``) and, with ``words_only``, punctuation and
    symbol pieces weighted 0 (unless nothing else is left)."""
    tau: float | None = None
    lam: float = 1.0
    idf: bool = True
    words_only: bool = False

    @property
    def label(self) -> str:
        pool = "maxsim" if self.tau is None else f"soft τ={self.tau:g}"
        return (f"{pool}, λ={self.lam:g}, idf {'on' if self.idf else 'off'}, "
                f"{'words only' if self.words_only else 'all tokens'}")

    def to_dict(self) -> dict:
        return asdict(self)


#: The family cross-validation chooses from (24 settings), fixed before any measurement.
FAMILY: tuple[TextRerankSettings, ...] = tuple(
    TextRerankSettings(tau, lam, idf, words) for tau, lam, idf, words in
    product((None, 0.05), (0.5, 1.0, 2.0), (False, True), (False, True)))

#: The default: the family's best on all queries of the man-page collection; each half's choice
#: (the same but for the word filter) scored 0.904 nDCG@10 on the other half against dense 0.850
#: (benchmarks/results/quality.md). λ = 2 is the family's largest: larger was not tried.
DEFAULT = TextRerankSettings(tau=None, lam=2.0, idf=True, words_only=True)


def idf_weights(df, n: int) -> np.ndarray:
    """BM25's idf_t = ln(1 + (n − df_t + 0.5)/(df_t + 0.5)) for document frequencies df of a
    collection of n documents (always > 0; a piece never seen gets the largest weight)."""
    df = np.asarray(df, dtype=np.float64)
    n = max(int(n), 0)
    return np.log1p((n - np.minimum(df, n) + 0.5) / (df + 0.5)).astype(np.float32)


def query_token_weights(settings: TextRerankSettings, df=None, n: int = 0,
                        is_word=None) -> np.ndarray | None:
    """The per-query-token weights the scorer gets: IDF (from df, n) when ``settings.idf``,
    times the word mask when ``settings.words_only`` (ignored if it would drop every token);
    ``None`` when all weights are equal."""
    weights = None
    if settings.idf and df is not None:
        weights = idf_weights(df, n)
    if settings.words_only and is_word is not None:
        mask = np.asarray(is_word, dtype=bool)
        if mask.any() and not mask.all():
            weights = (np.ones(mask.shape, np.float32) if weights is None else weights) * mask
    return weights
