"""pgml.chunk through psql against the endpoint: the chunks LangChain's splitters make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_text_splitters import (
    CharacterTextSplitter,
    LatexTextSplitter,
    MarkdownTextSplitter,
    PythonCodeTextSplitter,
    RecursiveCharacterTextSplitter,
)

from predictor.server import SqlEndpoint
from tests.predictor.endpoint_client import psql

TEXT = {
    "character": "One sentence here.\n\nAnother one there.\n\nA third, longer sentence.",
    "recursive_character": (
        "PostgresML splits text into chunks. Each chunk is small enough to embed.\n\n"
        "The sidecar does the same, with the same splitters and the same options."
    ),
    "markdown": "# Title\n\nSome text under it.\n\n## Part\n\n- a point\n- another point\n",
    "latex": "\\section{Intro}\nSome words here.\n\\subsection{More}\nOther words, quite a few.",
    "python": "def f(x):\n    return x + 1\n\n\nclass A:\n    def g(self):\n        pass\n",
}
SPLITTERS = {
    "character": CharacterTextSplitter,
    "recursive_character": RecursiveCharacterTextSplitter,
    "markdown": MarkdownTextSplitter,
    "latex": LatexTextSplitter,
    "python": PythonCodeTextSplitter,
}
KWARGS = {"chunk_size": 30, "chunk_overlap": 5}


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize("splitter", SPLITTERS)
def test_chunks_are_langchains(pg_bin: Path, endpoint: SqlEndpoint, splitter: str) -> None:
    kwargs = json.dumps(KWARGS)
    expected = SPLITTERS[splitter](**KWARGS).split_text(TEXT[splitter])
    assert len(expected) > 1
    script = (
        "SELECT chunk_index || E'\\t' || replace(chunk, E'\\n', '\\n')"
        f" FROM pgml.chunk({_quoted(splitter)}, {_quoted(TEXT[splitter])},"
        f" {_quoted(kwargs)}::jsonb) ORDER BY chunk_index;\n"
    )
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    got = [line.split("\t", 1) for line in lines]
    assert [int(i) for i, _ in got] == list(range(1, len(expected) + 1))
    assert [c.replace("\\n", "\n") for _, c in got] == expected


def test_chunk_over_a_table_and_in_a_select_list(pg_bin: Path, endpoint: SqlEndpoint) -> None:
    script = """
SELECT d.id, c.chunk_index, c.chunk
  FROM (VALUES (1, 'alpha beta gamma delta'), (2, NULL), (3, 'x')) AS d(id, body),
       pgml.chunk('character', d.body,
                  '{"separator": " ", "chunk_size": 11, "chunk_overlap": 0}') AS c
 ORDER BY 1, 2;
SELECT count(*) FROM pgml.chunk('recursive_character', repeat('word ', 400));
SELECT pgml.chunk('character', 'one two', kwargs => '{"separator": " ", "chunk_size": 3,
                                                     "chunk_overlap": 0}');
SELECT chunk FROM pgml.chunk(splitter => 'character', text => 'a b', kwargs => '{}');
"""
    lines = psql(pg_bin, endpoint, script).stdout.splitlines()
    default = RecursiveCharacterTextSplitter().split_text("word " * 400)
    assert lines == [
        "1|1|alpha beta",
        "1|2|gamma delta",
        "3|1|x",
        str(len(default)),
        "(1,one)",
        "(2,two)",
        "a b",
    ]


@pytest.mark.parametrize(
    ("statement", "sqlstate", "message"),
    [
        ("SELECT * FROM pgml.chunk('nltk', 'Some text. More text.')", "0A000",
         "the nltk splitter needs NLTK's punkt sentence tokenizer, a model downloaded"),
        ("SELECT * FROM pgml.chunk('spacy', 'Some text.')", "0A000",
         "the spacy splitter needs spaCy's en_core_web_sm pipeline"),
        ("SELECT * FROM pgml.chunk('words', 'Some text.')", "22023",
         'unknown splitter "words": pgml.chunk splits with character, latex, markdown, python,'
         " recursive_character"),
        ("SELECT * FROM pgml.chunk('character', 'text',"
         " '{\"chunk_size\": 2, \"chunk_overlap\": 5}')",
         "22023", "character splitter: Got a larger chunk overlap (5) than chunk size (2)"),
        ("SELECT * FROM pgml.chunk('character', 'text', '{\"no_such_option\": 1}')",
         "22023", "character splitter:"),
        ("SELECT * FROM pgml.chunk('character', 'text', '[1, 2]')", "22023",
         "pgml.chunk's kwargs must be a JSON object"),
        ("SELECT * FROM pgml.chunk('character')", "42883",
         "function pgml.chunk takes (splitter varchar, text varchar, kwargs varchar)"),
    ],
)  # fmt: skip
def test_chunk_errors(
    pg_bin: Path, endpoint: SqlEndpoint, statement: str, sqlstate: str, message: str
) -> None:
    done = psql(pg_bin, endpoint, f"\\set VERBOSITY verbose\n{statement};\n", check=False)
    assert done.returncode == 3, done.stdout
    assert f"ERROR:  {sqlstate}: {message}" in done.stderr, done.stderr
