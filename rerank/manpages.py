"""A labelled retrieval collection from the manual pages installed on the machine.

Each page gives one document and one query: the query is the page's one-line NAME summary
("ls \\- list directory contents" → "list directory contents"), the document is the start of its
DESCRIPTION section, and the page is the query's one relevant document (known-item retrieval).
Pages with the same summary or the same description (aliases, alpha/beta twins of one command)
are kept once. The collection is written in the BEIR layout that ``rerank eval`` reads.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass

#: Where man pages live on Debian and most Linux systems.
MAN_ROOT = "/usr/share/man"

_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")          # \fB \fI \fR \f(CW \f[B]
_SPECIAL = {r"\-": "-", r"\(em": "—", r"\(en": "–", r"\(aq": "'", r"\(dq": '"', r"\(lq": '"',
            r"\(rq": '"', r"\(oq": "'", r"\(cq": "'", r"\(bu": "•", r"\(co": "©", r"\e": "\\",
            r"\ ": " ", r"\~": " ", r"\&": "", r"\|": "", r"\^": "", r"\/": "", r"\,": "",
            r"\:": "", r"\%": "", r"\0": " ", r"\.": "."}
_ESCAPE = re.compile(r"\\\*(\[[^\]]*\]|\(..|.)|\\[nk](\[[^\]]*\]|\(..|.)|\\[sv][-+]?\d+"
                     r"|\\[hwoHSxXlLNbDRZ]'[^']*'|\\\(..|\\\[[^\]]*\]|\\.")
_WORDS = re.compile(r"\S+")


def roff_text(line: str) -> str:
    """One line of roff input as plain text: fonts, escapes and quoting removed."""
    line = _FONT.sub("", line)
    for esc, char in _SPECIAL.items():
        line = line.replace(esc, char)
    return _ESCAPE.sub("", line)


def _sections(source: str) -> dict[str, list[str]]:
    """Text lines per section heading (man: .SH, mdoc: .Sh), macros stripped."""
    sections: dict[str, list[str]] = {}
    current = None
    page_name = ""                                        # mdoc: a bare .Nm repeats it
    for raw in source.splitlines():
        if raw.startswith((".SH", ".Sh", ".sh")) and len(raw) > 3 and raw[3] in " \t":
            current = roff_text(raw[4:]).strip().strip('"').upper()
            sections.setdefault(current, [])
            continue
        if current is None:
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].partition(" ")
            if macro in ("Nd",):                   # mdoc one-line description
                sections[current].append("\\- " + rest)
            elif macro in ("B", "I", "BI", "IB", "BR", "RB", "IR", "RI", "Nm", "Ar", "Fl",
                           "Xr", "Em", "Sy", "Pa", "Cm", "Dq", "Ql", "Li"):
                words = [w.strip('"') for w in rest.split()]
                if macro == "Nm":
                    page_name = page_name or " ".join(words[:1])
                    words = words or [page_name]
                if macro == "Fl":
                    words = ["-" + w for w in words]
                sections[current].append(" ".join(words) if macro in ("B", "I", "Nm", "Ar",
                                                                        "Fl", "Pa", "Cm")
                                         else "".join(words))
            continue
        sections[current].append(raw)
    return {name: [roff_text(x) for x in lines] for name, lines in sections.items()}


@dataclass(frozen=True)
class ManPage:
    """One parsed page: its name, section, NAME summary and DESCRIPTION text."""
    name: str
    section: str
    summary: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.name}.{self.section}"


def parse_page(path: str, max_words: int = 120) -> ManPage | None:
    """The page at ``path`` (.gz or plain roff), or ``None`` when it is an alias (``.so``), has
    no ``name - summary`` line, or has no DESCRIPTION of at least 20 words."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            source = fh.read()
    except (OSError, EOFError):
        return None
    if source.lstrip().startswith(".so "):
        return None
    sections = _sections(source)
    name_text = " ".join(" ".join(sections.get("NAME", [])).split())
    names, sep, summary = name_text.partition(" - ")
    if not sep:
        return None
    summary = summary.strip().rstrip(".")
    words = _WORDS.findall(" ".join(sections.get("DESCRIPTION", [])))
    if len(summary.split()) < 2 or len(words) < 20:
        return None
    base = os.path.basename(path)
    base = base[:-3] if base.endswith(".gz") else base
    stem, _, section = base.rpartition(".")
    return ManPage(stem, section, summary, " ".join(words[:max_words]))


def _shuffle_key(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def installed_pages(root: str = MAN_ROOT, sections=("1", "8"), *, max_words: int = 120):
    """Parsed pages of the given sections under ``root`` (English pages only), deduplicated: a
    summary or description seen before drops the page."""
    seen_summary, seen_desc = set(), set()
    for section in sections:
        folder = os.path.join(root, f"man{section}")
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            path = os.path.join(folder, entry)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            page = parse_page(path, max_words=max_words)
            if page is None:
                continue
            s_key, d_key = page.summary.lower(), page.description.lower()
            if s_key in seen_summary or d_key in seen_desc:
                continue
            seen_summary.add(s_key)
            seen_desc.add(d_key)
            yield page


def write_collection(out_dir: str, *, documents: int = 3000, queries: int = 1000,
                     root: str = MAN_ROOT, sections=("1", "8"), max_words: int = 120) -> dict:
    """Write a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv) of up to ``documents``
    pages and ``queries`` of their summaries, both drawn by a hash of the page id (stable when
    pages are added). Returns ``{"documents", "queries", "available"}``."""
    pages = list(installed_pages(root, sections, max_words=max_words))
    if not pages:
        raise ValueError(f"no usable man pages under {root} (sections {', '.join(sections)}); "
                         "install some (e.g. apt-get install man-db manpages)")
    pages.sort(key=lambda p: _shuffle_key(p.id))
    chosen = pages[:documents]
    asked = chosen[:queries]
    os.makedirs(os.path.join(out_dir, "qrels"), exist_ok=True)
    with open(os.path.join(out_dir, "corpus.jsonl"), "w", encoding="utf-8") as fh:
        for p in chosen:
            fh.write(json.dumps({"_id": p.id, "title": p.name, "text": p.description,
                                 "metadata": {"section": p.section}}) + "\n")
    with open(os.path.join(out_dir, "queries.jsonl"), "w", encoding="utf-8") as fh:
        for p in asked:
            fh.write(json.dumps({"_id": "q:" + p.id, "text": p.summary}) + "\n")
    with open(os.path.join(out_dir, "qrels", "test.tsv"), "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for p in asked:
            fh.write(f"q:{p.id}\t{p.id}\t1\n")
    return {"documents": len(chosen), "queries": len(asked), "available": len(pages)}
