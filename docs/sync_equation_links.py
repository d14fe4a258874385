"""Rewrite the line numbers of README.md's equation table after rhn_np/rhn.py or rhn_np/dtrnn.py changed.

Each link in the table ("The paper in the code") points at the line of a source file
that carries an equation marker (``# Eq. 7``, ``# (DT-1)`` and the like); this script
finds those lines by their marker text and updates the ``#L<n>`` anchors, both in the
link target and in a link text of the form ``rhn_np/<file>.py#L<n>`` or ``#L<n>``.
tests/test_docs.py checks the result.

Every row prefix below must match exactly one row of the table, the row must hold as
many links as it has markers (in the same order and into the same files), and every
marker must occur exactly once in its file; otherwise the script stops with a message
and writes nothing. When a marker's text changes in the code, change it here.

Usage: python docs/sync_equation_links.py
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
RHN = "rhn_np/rhn.py"
DTRNN = "rhn_np/dtrnn.py"
MARKERS = {  # row prefix of the README table -> (file, marker text) of its links, in order
    "| Eq. 6 ": [(RHN, "s = h * t + s_in * c  # Eq. 6"), (RHN, "# Eq. 6 with c = 1 - t")],
    "| Eq. 7 ": [(RHN, "h = xp.tanh(a[:, :n])  # Eq. 7")],
    "| Eq. 8 ": [(RHN, "# Eq. 8")],
    "| Eq. 9 ": [(RHN, "c = sigmoid(a[:, 2 * n :], xp)  # Eq. 9")],
    "| Eqs. 7–9": [(RHN, "pre-activations of Eqs. 7-9: one product"), (RHN, "# x-part of Eqs. 7-9")],
    "| BPTT of Eqs.": [(RHN, "# BPTT of Eqs. 6-7")],
    "| (DT-1) ": [(DTRNN, "# (DT-1)"), (DTRNN, "# input part of (DT-1)")],
    "| (DT-2) ": [(DTRNN, "# (DT-2)")],
    "| BPTT of (DT-": [(DTRNN, "from (DT-1), (DT-2)::")],
}
# a link into the package: [text](rhn_np/<path>.py#L<n>)
LINK = re.compile(r"\[([^\]\n]*)\]\((rhn_np/[\w/]+\.py)#L(\d+)\)")


def line_of(path: str, marker: str, cache: dict) -> int:
    """The 1-based line of ``path`` holding ``marker``; it must occur exactly once."""
    if path not in cache:
        cache[path] = (ROOT / path).read_text(encoding="utf-8").splitlines()
    hits = [i + 1 for i, text in enumerate(cache[path]) if marker in text]
    if len(hits) != 1:
        raise SystemExit(f"marker {marker!r} found on lines {hits} of {path}; expected exactly one "
                         "(update MARKERS in docs/sync_equation_links.py)")
    return hits[0]


def synced(readme: str) -> str:
    """README text with every equation link of the table pointing at its marker's line."""
    sources: dict = {}
    seen = {prefix: 0 for prefix in MARKERS}
    out = []
    for row in readme.split("\n"):
        prefix = next((p for p in MARKERS if row.startswith(p)), None)
        if prefix is not None:
            seen[prefix] += 1
            markers = MARKERS[prefix]
            links = list(LINK.finditer(row))
            if len(links) != len(markers):
                raise SystemExit(f"the README row starting {prefix!r} has {len(links)} links into rhn_np/, "
                                 f"MARKERS gives {len(markers)}")
            pieces, end = [], 0
            for link, (path, marker) in zip(links, markers):
                text, target = link.group(1), link.group(2)
                if target != path:
                    raise SystemExit(f"the README row starting {prefix!r} links {target}; its marker "
                                     f"{marker!r} is in {path}")
                n = line_of(path, marker, sources)
                text = re.sub(r"#L\d+$", f"#L{n}", text)
                pieces.append(row[end : link.start()] + f"[{text}]({path}#L{n})")
                end = link.end()
            row = "".join(pieces) + row[end:]
        out.append(row)
    missing = [p for p, k in seen.items() if k != 1]
    if missing:
        raise SystemExit(f"README rows {missing} of MARKERS are missing or repeated in the table")
    return "\n".join(out)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = synced(text)
    if new != text:
        readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
