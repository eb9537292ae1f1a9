"""Generated blocks inside hand-written Markdown: replace the text between two markers.

``replace_block(path, key, text)`` puts ``text`` between ``<!-- KEY: begin -->`` and
``<!-- KEY: end -->`` in ``path`` (appended at the end when the markers are absent) and leaves
the rest of the file as it is. Used by ``tools/bench.py --write`` (BENCHMARKS.md) and
``experiments/ablation.py --readme`` (README.md).
"""

from __future__ import annotations


def replace_block(path: str, key: str, text: str) -> None:
    begin, end = f"<!-- {key}: begin -->", f"<!-- {key}: end -->"
    with open(path, encoding="utf-8") as handle:
        content = handle.read()
    block = f"{begin}\n{text.strip()}\n{end}"
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
