"""The man-page collection: roff and mdoc pages parsed to (summary, description), aliases and
duplicates dropped, a BEIR folder written that the loaders read back."""
import gzip
import json
import os

import pytest

from rerank import manpages
from rerank.corpus import load_beir

WORDS = " ".join(f"word{i}" for i in range(30))

MAN_PAGE = rf""".\" generated
.TH LS "1" "2022" "GNU coreutils" "User Commands"
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fI\,OPTION\/\fR]...
.SH DESCRIPTION
.\" a comment
.PP
List information about the FILEs (the \fBcurrent\fR directory by default).
Sort entries \-alphabetically\(em {WORDS}.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries
.SH AUTHOR
Someone.
"""

MDOC_PAGE = f""".Dd March 2020
.Dt CAL 1
.Sh NAME
.Nm cal
.Nd displays a calendar and the date of Easter
.Sh DESCRIPTION
The
.Nm
utility displays a simple calendar in traditional format. {WORDS}
"""


def _write(root, name, text, section="1", gz=True):
    folder = root / f"man{section}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_parse_a_man_page_and_an_mdoc_page(tmp_path):
    page = manpages.parse_page(str(_write(tmp_path, "ls.1", MAN_PAGE)))
    assert (page.name, page.section, page.summary) == ("ls", "1", "list directory contents")
    assert page.description.startswith("List information about the FILEs (the current "
                                       "directory by default). Sort entries -alphabetically—")
    assert "\\" not in page.description and "Someone" not in page.description
    assert "--all" in page.description and page.id == "ls.1"
    cal = manpages.parse_page(str(_write(tmp_path, "cal.1", MDOC_PAGE, gz=False)))
    assert cal.summary == "displays a calendar and the date of Easter"
    assert cal.description.startswith("The cal utility displays a simple calendar")
    short_page = MAN_PAGE.split(".SH DESCRIPTION")[0] + ".SH DESCRIPTION\nToo short here.\n"
    short = manpages.parse_page(str(_write(tmp_path, "x.1", short_page)))
    assert short is None                                 # description under 20 words
    alias = manpages.parse_page(str(_write(tmp_path, "dir.1", ".so man1/ls.1\n")))
    assert alias is None
    assert manpages.parse_page(str(tmp_path / "missing.1.gz")) is None
    assert len(manpages.parse_page(str(tmp_path / "man1" / "ls.1.gz"), max_words=12)
               .description.split()) == 12


def test_write_collection_dedupes_and_reads_back(tmp_path):
    root = tmp_path / "man"
    _write(root, "ls.1", MAN_PAGE)
    _write(root, "lsalias.1", MAN_PAGE.replace("ls \\-", "lsalias \\-"))    # same summary
    _write(root, "cal.1", MDOC_PAGE)
    _write(root, "mount.8", MAN_PAGE.replace("list directory contents", "mount a filesystem")
           .replace("List information", "Attach filesystems"), section="8")
    os.symlink(root / "man1" / "ls.1.gz", root / "man1" / "link.1.gz")
    out = tmp_path / "beir"
    info = manpages.write_collection(str(out), documents=10, queries=2, root=str(root))
    assert info == {"documents": 3, "queries": 2, "available": 3}
    data = load_beir(out)
    assert len(data.corpus) == 3 and len(data.queries) == 2
    for qid, rel in data.qrels.items():
        (doc_id, grade), = rel.items()
        assert qid == "q:" + doc_id and grade == 1 and doc_id in data.corpus
    corpus = [json.loads(line) for line in open(out / "corpus.jsonl")]
    assert {c["_id"] for c in corpus} == {"cal.1", "mount.8", "ls.1"}
    again = manpages.write_collection(str(tmp_path / "again"), documents=10, queries=2,
                                      root=str(root))
    assert again == info
    assert (tmp_path / "again" / "corpus.jsonl").read_text() == (out / "corpus.jsonl").read_text()
    with pytest.raises(ValueError, match="no usable man pages"):
        manpages.write_collection(str(tmp_path / "none"), root=str(tmp_path / "empty"))
