"""Copies docs/results/results.md into README.md's Results section, between the markers
`<!-- results:begin -->` and `<!-- results:end -->`, so the README's figures are the
committed file's, never typed by hand. tests/it/docs.rs fails when the two differ.

Run: python3 scripts/readme_results.py
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
readme = root / "README.md"
results = (root / "docs/results/results.md").read_text()
text = readme.read_text()
pattern = re.compile(r"(<!-- results:begin[^\n]*-->\n).*?(<!-- results:end -->)", re.S)
if not pattern.search(text):
    raise SystemExit("README.md has no <!-- results:begin --> ... <!-- results:end --> markers")
readme.write_text(pattern.sub(lambda m: m.group(1) + results + m.group(2), text, count=1))
print("README.md: Results section updated from docs/results/results.md")
