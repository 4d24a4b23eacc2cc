"""Document collections as ``rerank index`` and ``rerank eval`` read them.

Three input formats (DESIGN.md, "Command line and wire formats"), each read lazily as an iterator
of documents ``{"id": str, "text": str, "title"?: str, "metadata": dict}``:

- **JSON lines**: one object per line, ``{"id"|"_id": str, "text": str, "title"?: str,
  "metadata"?: {}}``. Blank lines are skipped. Ids are JSON strings (ids are strings everywhere:
  an integer id is refused, not converted). Keys other than these four (``_id`` counts as
  ``id``) are kept in the document's metadata (the explicit ``metadata`` object wins on a clash).
- **BEIR folder**: ``corpus.jsonl`` (the format above), ``queries.jsonl`` (``{"_id", "text"}``)
  and ``qrels/<split>.tsv`` (``query-id  corpus-id  score``, tab-separated, with that header).
  ``rerank index`` reads its ``corpus.jsonl``; :func:`load_beir` reads all three.
- **A folder of text files**: every non-hidden file under it (hidden files and folders, whose
  names start with ``.``, are skipped; so are empty files and binary files, those with a NUL byte
  in their first 8 KiB). The id is the path relative to the folder with ``/`` separators; the text
  is the file's content decoded as UTF-8 with undecodable bytes replaced. Files are read in sorted
  path order.

Titles: when a document has a non-empty title, the indexed text is ``title + "\\n" + text`` and
the title is also kept in ``metadata["title"]`` (and in the document's ``"title"``). An empty
title counts as none.

Every error is a ``ValueError`` that names the file and line (``path:line: what is wrong``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["BeirDataset", "CorpusSource", "iter_jsonl", "iter_text_folder", "load_beir",
           "open_corpus", "read_queries", "read_qrels"]

_ID_KEYS = ("id", "_id")
_KNOWN_KEYS = {"id", "_id", "text", "title", "metadata"}
_BINARY_SNIFF = 8192


def _error(path, line: int | None, message: str) -> ValueError:
    where = f"{path}:{line}" if line is not None else f"{path}"
    return ValueError(f"{where}: {message}")


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a UTF-8 file (a BOM is ignored)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _error(path, number, f"not valid UTF-8 ({exc.reason} at byte "
                                           f"{exc.start})") from None
            if text.strip():
                yield number, text


def _parse_object(path: str, number: int, text: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise _error(path, number, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _string_id(path: str, number: int, obj: dict) -> str:
    present = [k for k in _ID_KEYS if k in obj]
    if not present:
        raise _error(path, number, 'missing "id" (or "_id")')
    values = [obj[k] for k in present]
    for key, value in zip(present, values):
        if not isinstance(value, str):
            raise _error(path, number, f'"{key}" must be a JSON string (ids are strings); got '
                                       f"{type(value).__name__} {value!r}")
        if not value.strip():
            raise _error(path, number, f'"{key}" must not be empty')
    if len(set(values)) > 1:
        raise _error(path, number, f'"id" {values[0]!r} and "_id" {values[1]!r} differ')
    return values[0]


def _document(path: str, number: int, obj: dict) -> dict:
    doc_id = _string_id(path, number, obj)
    if "text" not in obj:
        raise _error(path, number, f'document {doc_id!r} has no "text"')
    text = obj["text"]
    if not isinstance(text, str):
        raise _error(path, number, f'"text" of {doc_id!r} must be a string; got '
                                   f"{type(text).__name__}")
    title = obj.get("title")
    if title is not None and not isinstance(title, str):
        raise _error(path, number, f'"title" of {doc_id!r} must be a string; got '
                                   f"{type(title).__name__}")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _error(path, number, f'"metadata" of {doc_id!r} must be a JSON object; got '
                                   f"{type(metadata).__name__}")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_KEYS}
    metadata = {**extra, **metadata}
    doc = {"id": doc_id}
    if title is not None and title.strip():
        doc["title"] = title
        metadata["title"] = title
        text = f"{title}\n{text}" if text else title
    if not text.strip():
        raise _error(path, number, f"document {doc_id!r} has an empty text (and no title)")
    doc["text"] = text
    doc["metadata"] = metadata
    return doc


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The documents of a JSON-lines file, in file order (see the module doc for the format).

    ``ValueError`` naming ``path:line`` for invalid JSON, a line that is not an object, a missing
    or non-string id, an id repeated from an earlier line, a missing or non-string text, an empty
    text without a title, or metadata that is not an object."""
    path = os.fspath(path)
    seen: dict[str, int] = {}
    for number, text in _read_lines(path):
        doc = _document(path, number, _parse_object(path, number, text))
        first = seen.setdefault(doc["id"], number)
        if first != number:
            raise _error(path, number, f"id {doc['id']!r} repeats line {first}")
        yield doc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _text_files(root: str) -> Iterator[tuple[str, str]]:
    """``(relative id, full path)`` of the non-hidden, non-empty files under ``root``, sorted."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in sorted(files):
            if _is_hidden(name):
                continue
            full = os.path.join(folder, name)
            if not os.path.isfile(full) or os.path.getsize(full) == 0:
                continue
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            yield rel, full


def iter_text_folder(root: str | os.PathLike) -> Iterator[dict]:
    """One document per text file under ``root`` (see the module doc): ``{"id": relative path,
    "text": content, "metadata": {"path": relative path}}``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a folder")
    for rel, full in _text_files(root):
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ValueError(f"{full}: cannot be read: {exc.strerror or exc}") from None
        if b"\0" in data[:_BINARY_SNIFF]:
            continue   # a binary file
        text = data.decode("utf-8-sig", errors="replace")
        if not text.strip():
            continue
        yield {"id": rel, "text": text, "metadata": {"path": rel}}


@dataclass
class CorpusSource:
    """A document collection on disk: ``kind`` is ``"jsonl"``, ``"beir"`` or ``"folder"``;
    ``path`` is what was given, ``documents_path`` the file or folder the documents come from.
    Iterating it reads the documents (lazily, every time); :meth:`count` reads them once to count
    them, validating every line on the way."""
    path: str
    kind: str
    documents_path: str

    def __iter__(self) -> Iterator[dict]:
        if self.kind == "folder":
            return iter_text_folder(self.documents_path)
        return iter_jsonl(self.documents_path)

    def count(self) -> int:
        """How many documents iterating yields (JSON lines: every line is parsed and checked, so
        a bad line is reported before anything is indexed)."""
        return sum(1 for _ in self)


def open_corpus(path: str | os.PathLike) -> CorpusSource:
    """The collection at ``path``: a ``.jsonl`` file (any file is read as JSON lines), a BEIR
    folder (one that holds ``corpus.jsonl``) or a folder of text files. ``ValueError`` when
    ``path`` does not exist."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return CorpusSource(path, "jsonl", path)
    if os.path.isdir(path):
        corpus = os.path.join(path, "corpus.jsonl")
        if os.path.isfile(corpus):
            return CorpusSource(path, "beir", corpus)
        return CorpusSource(path, "folder", path)
    raise ValueError(f"{path}: no such file or folder")


# --------------------------------------------------------------------------------------- BEIR
@dataclass
class BeirDataset:
    """A BEIR collection: ``corpus`` (id → document, as :func:`iter_jsonl` yields them),
    ``queries`` (query id → text; only queries that have qrels), ``qrels`` (query id → {document
    id → relevance}), ``name`` (the folder's name), ``path`` and the qrels ``split``."""
    corpus: dict[str, dict]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = ""
    path: str = ""
    split: str = "test"


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """Query id → text from a BEIR ``queries.jsonl`` (``{"_id"|"id": str, "text": str}``);
    ``ValueError`` naming ``path:line`` for a bad line, an empty text or a repeated id."""
    path = os.fspath(path)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, text in _read_lines(path):
        obj = _parse_object(path, number, text)
        qid = _string_id(path, number, obj)
        query = obj.get("text")
        if not isinstance(query, str):
            raise _error(path, number, f'query {qid!r} needs a "text" string')
        if not query.strip():
            raise _error(path, number, f"query {qid!r} has an empty text")
        if qid in lines:
            raise _error(path, number, f"query id {qid!r} repeats line {lines[qid]}")
        lines[qid] = number
        queries[qid] = query
    return queries


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Query id → {document id → relevance} from a BEIR qrels file: lines ``query-id corpus-id
    score`` separated by tabs (or other whitespace), after an optional header line
    ``query-id corpus-id score``; ``score`` is an integer. ``ValueError`` naming ``path:line``
    for a line without exactly three fields or with a non-integer score, and for a pair judged
    twice with different scores."""
    path = os.fspath(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, text in _read_lines(path):
        line = text.rstrip("\r\n")
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if number == 1 and [f.lower() for f in fields] == ["query-id", "corpus-id", "score"]:
            continue
        if len(fields) != 3 or not all(fields):
            raise _error(path, number, f"expected 'query-id<TAB>corpus-id<TAB>score', got "
                                       f"{line!r}")
        qid, doc_id, score = fields
        try:
            rel = int(score)
        except ValueError:
            raise _error(path, number, f"score must be an integer; got {score!r}") from None
        judged = qrels.setdefault(qid, {})
        if judged.get(doc_id, rel) != rel:
            raise _error(path, number, f"({qid!r}, {doc_id!r}) is judged {judged[doc_id]} "
                                       f"earlier and {rel} here")
        judged[doc_id] = rel
    return qrels


def load_beir(path: str | os.PathLike, split: str = "test") -> BeirDataset:
    """Read a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Only queries with qrels are kept. ``ValueError`` for a missing file (naming it), any bad
    line (naming ``file:line``), an empty text, or qrels naming a query that ``queries.jsonl``
    does not have. Qrels may name documents missing from the corpus (they still count as
    relevant when scoring, as in BEIR)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: not a folder (a BEIR dataset is a folder with corpus.jsonl, "
                         f"queries.jsonl and qrels/{split}.tsv)")
    files = {"corpus": os.path.join(path, "corpus.jsonl"),
             "queries": os.path.join(path, "queries.jsonl"),
             "qrels": os.path.join(path, "qrels", f"{split}.tsv")}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"{path} is not a BEIR dataset: missing {', '.join(missing)}")
    corpus = {doc["id"]: doc for doc in iter_jsonl(files["corpus"])}
    if not corpus:
        raise ValueError(f"{files['corpus']}: no documents")
    all_queries = read_queries(files["queries"])
    qrels = read_qrels(files["qrels"])
    unknown = [q for q in qrels if q not in all_queries]
    if unknown:
        raise ValueError(f"{files['qrels']}: {len(unknown)} query id(s) are not in "
                         f"{files['queries']}: {unknown[:5]!r}")
    if not qrels:
        raise ValueError(f"{files['qrels']}: no judgements")
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return BeirDataset(corpus=corpus, queries=queries,
                       qrels={q: qrels[q] for q in queries},
                       name=os.path.basename(os.path.normpath(path)), path=path, split=split)
