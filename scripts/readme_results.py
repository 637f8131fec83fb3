"""Copies committed results into README.md between markers, so the README's figures are
the committed files', never typed by hand: docs/results/results.md into the Results
section (`<!-- results:begin -->` ... `<!-- results:end -->`), the PyTorch twin's run of its
student alone, docs/results/pytorch-student/results.md, just after it (`baseline`), and
docs/results/digits/results.md into Your own data (`<!-- digits:begin -->` ...
`<!-- digits:end -->`), and the paper's experiments (fraction, omit, ensemble) from
docs/results/<experiment>/results.md between their markers, and the speed table
bench/SPEED.md (`scripts/bench_report.py speed`) into Speed. tests/it/docs.rs fails when
they differ.

Run: python3 scripts/readme_results.py
"""
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
readme = root / "README.md"
text = readme.read_text()
for marker, source in [
    ("results", "docs/results/results.md"),
    ("baseline", "docs/results/pytorch-student/results.md"),
    ("fraction", "docs/results/fraction/results.md"),
    ("omit", "docs/results/omit/results.md"),
    ("ensemble", "docs/results/ensemble/results.md"),
    ("digits", "docs/results/digits/results.md"),
    ("speed", "bench/SPEED.md"),
]:
    if not (root / source).exists():
        print(f"README.md: {marker} left as it is: {source} is not made yet")
        continue
    results = (root / source).read_text()
    pattern = re.compile(r"(<!-- " + marker + r":begin[^\n]*-->\n).*?(<!-- " + marker + r":end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {marker}:begin --> ... <!-- {marker}:end --> markers")
    text = pattern.sub(lambda m: m.group(1) + results + m.group(2), text, count=1)
    print(f"README.md: {marker} updated from {source}")
readme.write_text(text)
