"""Corpus loaders: JSON lines, BEIR folders, folders of text files; titles; errors naming
file:line."""
import json
import os

import pytest

from rerank.corpus import iter_jsonl, iter_text_folder, load_beir, open_corpus, read_qrels


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def make_beir(root, *, corpus=None, queries=None, qrels=None):
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "corpus.jsonl", corpus or [
        {"_id": "d1", "title": "Cats", "text": "Cats purr.", "metadata": {"year": 2020}},
        {"_id": "d2", "title": "", "text": "Volcanoes erupt."},
        {"_id": "d3", "text": "Bread rises."}])
    write_jsonl(root / "queries.jsonl", queries or [
        {"_id": "q1", "text": "do cats purr"}, {"_id": "q2", "text": "lava"},
        {"_id": "q3", "text": "unjudged query"}])
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        qrels if qrels is not None else
        "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t0\nq2\td2\t1\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------ JSON lines
def test_jsonl_documents_ids_titles_metadata(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        {"id": "a", "text": "alpha"},
        "",                                               # blank lines are skipped
        {"_id": "b", "text": "beta", "title": "B title", "metadata": {"lang": "en"}},
        {"id": "c", "_id": "c", "text": "gamma", "source": "web", "metadata": {"source": "x"}},
        {"id": "d", "text": "", "title": "Only a title"},
        {"id": "e", "text": "no title", "title": "  "},   # a blank title counts as none
    ])
    docs = list(iter_jsonl(path))
    assert [d["id"] for d in docs] == ["a", "b", "c", "d", "e"]
    assert docs[0] == {"id": "a", "text": "alpha", "metadata": {}}
    assert docs[1] == {"id": "b", "title": "B title", "text": "B title\nbeta",
                       "metadata": {"lang": "en", "title": "B title"}}
    # an unknown top-level key goes to metadata; the explicit metadata wins on a clash
    assert docs[2]["metadata"] == {"source": "x"}
    assert docs[3]["text"] == "Only a title" and docs[3]["metadata"] == {"title": "Only a title"}
    assert docs[4] == {"id": "e", "text": "no title", "metadata": {}}


def test_jsonl_extra_keys_go_to_metadata(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "t", "lang": "fr"}])
    assert next(iter_jsonl(path))["metadata"] == {"lang": "fr"}


def test_jsonl_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "t\u00e9"}).encode() + b"\n")
    assert next(iter_jsonl(path))["text"] == "t\u00e9"


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "text": "x"', "invalid JSON"),
    ('["a", "x"]', "expected a JSON object"),
    ('{"text": "x"}', 'missing "id"'),
    ('{"id": 7, "text": "x"}', "must be a JSON string"),
    ('{"_id": 7, "text": "x"}', "must be a JSON string"),
    ('{"id": "", "text": "x"}', "must not be empty"),
    ('{"id": "a", "_id": "b", "text": "x"}', "differ"),
    ('{"id": "z"}', 'has no "text"'),
    ('{"id": "z", "text": 3}', "must be a string"),
    ('{"id": "z", "text": "x", "title": 3}', '"title"'),
    ('{"id": "z", "text": "   "}', "empty text"),
    ('{"id": "z", "text": "x", "metadata": [1]}', '"metadata"'),
    ('{"id": "ok", "text": "x"}', "repeats line 1"),
])
def test_jsonl_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "ok", "text": "fine"}, "", line])
    with pytest.raises(ValueError, match=message) as info:
        list(iter_jsonl(path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_jsonl_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid UTF-8"):
        list(iter_jsonl(path))


# ------------------------------------------------------------------------------ text folders
def test_text_folder_ids_are_relative_paths_hidden_and_empty_skipped(tmp_path):
    root = tmp_path / "notes"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("first note", encoding="utf-8")
    (root / "sub" / "b.md").write_text("second\nnote", encoding="utf-8")
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"bad byte \xff here")
    (root / ".hidden.txt").write_text("secret", encoding="utf-8")
    (root / ".git" / "config").write_text("[core]", encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "blank.txt").write_text("  \n", encoding="utf-8")
    (root / "image.bin").write_bytes(b"\x89PNG\0\0\0binary")
    docs = list(iter_text_folder(root))
    assert [d["id"] for d in docs] == ["a.txt", "sub/b.md", "sub/deeper/c.txt"]
    assert docs[1]["text"] == "second\nnote" and docs[1]["metadata"] == {"path": "sub/b.md"}
    assert docs[2]["text"] == "bad byte \ufffd here"     # undecodable bytes replaced


def test_text_folder_missing(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        list(iter_text_folder(tmp_path / "nope"))


# ------------------------------------------------------------------------------ open_corpus
def test_open_corpus_detects_the_format(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    source = open_corpus(jsonl)
    assert source.kind == "jsonl" and source.count() == 2
    beir = make_beir(tmp_path / "beir")
    source = open_corpus(beir)
    assert source.kind == "beir" and source.documents_path == os.path.join(beir, "corpus.jsonl")
    assert [d["id"] for d in source] == ["d1", "d2", "d3"]
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "x.txt").write_text("hello", encoding="utf-8")
    source = open_corpus(folder)
    assert source.kind == "folder" and [d["id"] for d in source] == ["x.txt"]
    with pytest.raises(ValueError, match="no such file or folder"):
        open_corpus(tmp_path / "missing")


# ------------------------------------------------------------------------------------ BEIR
def test_load_beir(tmp_path):
    data = load_beir(make_beir(tmp_path / "scifake"))
    assert data.name == "scifake" and data.split == "test"
    assert set(data.corpus) == {"d1", "d2", "d3"}
    assert data.corpus["d1"]["text"] == "Cats\nCats purr."
    assert data.corpus["d1"]["metadata"] == {"year": 2020, "title": "Cats"}
    assert data.corpus["d2"]["text"] == "Volcanoes erupt." and "title" not in data.corpus["d2"]
    assert data.queries == {"q1": "do cats purr", "q2": "lava"}       # q3 has no qrels
    assert data.qrels == {"q1": {"d1": 2, "d3": 0}, "q2": {"d2": 1}}


def test_load_beir_missing_files(tmp_path):
    root = make_beir(tmp_path / "b")
    os.remove(root / "qrels" / "test.tsv")
    with pytest.raises(ValueError, match=r"missing .*qrels/test\.tsv"):
        load_beir(root)
    with pytest.raises(ValueError, match="not a folder"):
        load_beir(tmp_path / "none")


@pytest.mark.parametrize("qrels, where, message", [
    ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 'query-id<TAB>corpus-id<TAB>score'"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\thigh\n", 3, "score must be an integer"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", 3, "judged 1 earlier and 2 here"),
])
def test_load_beir_bad_qrels_name_file_and_line(tmp_path, qrels, where, message):
    root = make_beir(tmp_path / "b", qrels=qrels)
    with pytest.raises(ValueError, match=message) as info:
        load_beir(root)
    assert str(info.value).startswith(f"{root / 'qrels' / 'test.tsv'}:{where}: ")


def test_qrels_without_header_and_space_separated(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q1 d1 1\nq1\td2\t0\n", encoding="utf-8")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_load_beir_bad_queries_and_corpus(tmp_path):
    root = make_beir(tmp_path / "b1", queries=[{"_id": "q1", "text": "ok"},
                                                {"_id": "q2", "text": " "}])
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: query 'q2' has an empty text"):
        load_beir(root)
    root = make_beir(tmp_path / "b2", corpus=[{"_id": "d1", "text": "ok"},
                                              {"_id": "d2", "title": "", "text": ""}])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: .*empty text"):
        load_beir(root)
    root = make_beir(tmp_path / "b3", qrels="query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    with pytest.raises(ValueError, match=r"not in .*queries\.jsonl: \['q9'\]"):
        load_beir(root)
