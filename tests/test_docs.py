"""The README's map from paper equations to code must point at lines that hold them."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_equation_links_point_at_their_equations():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| Eq") or line.startswith("| BPTT")]
    assert len(rows) >= 6
    checked = 0
    for row in rows:
        eqs = re.findall(r"Eqs?\. (\d+)(?:–(\d+))?", row.split("|")[1])
        numbers = set()
        for lo, hi in eqs:
            numbers.update(range(int(lo), int(hi or lo) + 1))
        for path, line in re.findall(r"\]\((rhn_np/[\w./]+)#L(\d+)\)", row):
            text = (ROOT / path).read_text(encoding="utf-8").splitlines()[int(line) - 1]
            found = {int(n) for n in re.findall(r"Eqs?\. (\d+)", text)}
            found |= {n for lo, hi in re.findall(r"Eqs\. (\d+)-(\d+)", text) for n in range(int(lo), int(hi) + 1)}
            assert found & numbers, (
                f"{path}:{line} should implement Eq. {sorted(numbers)} but reads: {text.strip()!r}; "
                "run python docs/sync_equation_links.py"
            )
            checked += 1
    assert checked >= 7
