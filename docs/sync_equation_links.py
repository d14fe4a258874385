"""Rewrite the line numbers of README.md's equation table after rhn_np/rhn.py changed.

Each link in the table points at the line of rhn.py that carries an equation marker
(``# Eq. 7`` and the like); this script finds those lines by their marker text and
updates the ``#L<n>`` anchors. tests/test_docs.py checks the result.

Usage: python docs/sync_equation_links.py
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKERS = {  # row prefix of the README table -> marker texts of its links, in order
    "| Eq. 6 ": ["s = h * t + s_in * c  # Eq. 6", "# Eq. 6 with c = 1 - t"],
    "| Eq. 7 ": ["h = xp.tanh(a[:, :n])  # Eq. 7"],
    "| Eq. 8 ": ["# Eq. 8"],
    "| Eq. 9 ": ["c = sigmoid(a[:, 2 * n :], xp)  # Eq. 9"],
    "| Eqs. 7–9": ["pre-activations of Eqs. 7-9: one product", "# x-part of Eqs. 7-9"],
    "| BPTT": ["# BPTT of Eqs. 6-7"],
}


def line_of(lines, marker):
    hits = [i + 1 for i, text in enumerate(lines) if marker in text]
    if len(hits) != 1:
        raise SystemExit(f"marker {marker!r} found on lines {hits} of rhn_np/rhn.py; expected exactly one")
    return hits[0]


def main():
    lines = (ROOT / "rhn_np" / "rhn.py").read_text(encoding="utf-8").splitlines()
    readme = ROOT / "README.md"
    out = []
    for row in readme.read_text(encoding="utf-8").split("\n"):
        for prefix, markers in MARKERS.items():
            if row.startswith(prefix):
                links = re.findall(r"#L\d+\]\(rhn_np/rhn\.py#L\d+\)", row)
                for link, marker in zip(links, markers):
                    n = line_of(lines, marker)
                    row = row.replace(link, f"#L{n}](rhn_np/rhn.py#L{n})", 1)
        out.append(row)
    readme.write_text("\n".join(out), encoding="utf-8")


if __name__ == "__main__":
    main()
