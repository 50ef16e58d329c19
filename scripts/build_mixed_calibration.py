"""Build the bundled mixed-domain calibration text `mixed` (slimkit/data/mixed.txt) from this interpreter.

Three domains in equal byte budgets, interleaved in chunks of at most 4 KB cut at blank lines, so that a
512-token calibration window mostly sees one domain while 64 random windows see all three:

- prose: slimkit/data/wikitext2_valid.txt (WikiText-2 validation split, CC BY-SA 3.0; never the test split);
- docs: the Python reference documentation in this interpreter's `pydoc_data/topics.py` (PSF License 2.0);
- code: `CODE_MODULES`, pure-Python modules of this interpreter's standard library (PSF License 2.0).

Deterministic (no randomness): the same interpreter version gives the same bytes. The output depends on the
interpreter (its docs and sources), so the result is committed and never built at run time. Writes three files
into --out-dir (default slimkit/data): mixed.txt, mixed.sources.json (the Python version, the sha256 of every
input, and the domain and sources of every chunk by byte range) and LICENSE.mixed (the PSF licence text is read
from the interpreter's own LICENSE.txt). Prints the sha256 and the bytes per domain.

    python scripts/build_mixed_calibration.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import pydoc_data.topics
import re
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = REPO / "slimkit" / "data" / "wikitext2_valid.txt"
DOMAINS = ("prose", "docs", "code")
BUDGET = 400_000  # bytes per domain (the chunks kept are spread evenly over each domain's source)
MAX_CHUNK = 4096  # bytes; chunks are packed from blank-line-separated paragraphs up to this size
CODE_MODULES = (
    "abc.py",
    "argparse.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "glob.py",
    "graphlib.py",
    "heapq.py",
    "html/parser.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "numbers.py",
    "operator.py",
    "pprint.py",
    "queue.py",
    "reprlib.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "string.py",
    "textwrap.py",
    "timeit.py",
    "tokenize.py",
)
_BLANK = re.compile(r"[ \t]*\n")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def sources() -> dict[str, list[tuple[str, str]]]:
    """domain -> [(source name, text)] in a fixed order."""
    topics = pydoc_data.topics.topics
    lib = stdlib()
    return {
        "prose": [("wikitext2_valid.txt", WIKITEXT.read_text(encoding="utf-8"))],
        "docs": [(f"pydoc_data/topics.py:{key}", topics[key]) for key in sorted(topics)],
        "code": [(name, (lib / name).read_text(encoding="utf-8")) for name in sorted(CODE_MODULES)],
    }


def input_files() -> dict[str, Path]:
    """The files the text is built from, by the names the manifest and the licence use."""
    lib = stdlib()
    files = {"wikitext2_valid.txt": WIKITEXT, "pydoc_data/topics.py": Path(pydoc_data.topics.__file__)}
    return files | {name: lib / name for name in sorted(CODE_MODULES)}


def paragraphs(text: str) -> list[str]:
    """`text` cut after every blank line; a paragraph above MAX_CHUNK bytes is cut further at line ends."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        current.append(line)
        if _BLANK.fullmatch(line):
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    split: list[str] = []
    for para in out:
        if len(para.encode()) <= MAX_CHUNK:
            split.append(para)
            continue
        piece = ""
        for line in para.splitlines(keepends=True):
            if piece and len((piece + line).encode()) > MAX_CHUNK:
                split.append(piece)
                piece = ""
            piece += line
        split.append(piece)
    return split


def chunks(docs: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """Paragraphs of the documents packed in order into chunks of at most MAX_CHUNK bytes: [(sources, text)]."""
    out: list[tuple[list[str], str]] = []
    names: list[str] = []
    text = ""
    for name, doc in docs:
        for para in paragraphs(doc):
            if text and len((text + para).encode()) > MAX_CHUNK:
                out.append((names, text))
                names, text = [], ""
            if not names or names[-1] != name:
                text = text.rstrip() + "\n\n" if text else text  # a blank line between two documents
                names.append(name)
            text += para
    if text:
        out.append((names, text))
    cleaned = [(names, _LEADING_BLANK_LINES.sub("", text).rstrip() + "\n\n") for names, text in out]
    return [(names, text) for names, text in cleaned if text.strip()]


def spread(items: list[tuple[list[str], str]], budget: int) -> list[tuple[list[str], str]]:
    """About `budget` bytes of `items`, kept evenly over the list (all of it when it is smaller)."""
    total = sum(len(text.encode()) for _, text in items)
    share = min(1.0, budget / total)
    kept: list[tuple[list[str], str]] = []
    seen = taken = 0
    for names, text in items:
        size = len(text.encode())
        seen += size
        if taken + size / 2 <= seen * share:
            kept.append((names, text))
            taken += size
    return kept


def interleave(per_domain: dict[str, list[tuple[list[str], str]]]) -> list[tuple[str, list[str], str]]:
    """All chunks, the next one always from the domain with the fewest bytes so far (ties in DOMAINS order)."""
    queues = {domain: list(reversed(items)) for domain, items in per_domain.items()}
    emitted = dict.fromkeys(DOMAINS, 0)
    out: list[tuple[str, list[str], str]] = []
    while any(queues.values()):
        domain = min((d for d in DOMAINS if queues[d]), key=lambda d: (emitted[d], DOMAINS.index(d)))
        names, text = queues[domain].pop()
        out.append((domain, names, text))
        emitted[domain] += len(text.encode())
    return out


def psf_license() -> str:
    """Section B of the interpreter's LICENSE.txt: the PSF License Agreement and the licences it stacks on."""
    path = stdlib() / "LICENSE.txt"
    if not path.is_file():
        raise SystemExit(f"{path} not found: this interpreter does not ship its LICENSE.txt")
    text = path.read_text(encoding="utf-8")
    start = text.find("B. TERMS AND CONDITIONS FOR ACCESSING OR OTHERWISE USING PYTHON")
    if start < 0 or "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" not in text[start:]:
        raise SystemExit(f"{path}: no PSF License Agreement section found")
    return text[start:].rstrip() + "\n"


def license_text(version: str, counts: dict[str, int], total: int) -> str:
    modules = "\n".join(f"    {name}" for name in sorted(CODE_MODULES))
    psf = psf_license()
    years = re.findall(r"\b(?:19|20)\d\d\b", psf[psf.find("Copyright (c)") : psf.find("Python Software Foundation;")])
    copyright_line = f"Copyright (c) {years[0]}-{years[-1]} Python Software Foundation; All Rights Reserved"
    return f"""\
mixed.txt: a mixed-domain calibration text for slimkit, built by scripts/build_mixed_calibration.py from
CPython {version}. It is a compilation of excerpts from three sources, interleaved in chunks of at most
4 KB cut at blank lines ({total:,} bytes in all). mixed.sources.json gives, for every byte range of
mixed.txt, its domain and the source file (or documentation topic) it was taken from.

1. prose, {counts["prose"]:,} bytes: excerpts of wikitext2_valid.txt, the raw validation split of WikiText-2
   (Merity et al., 2016, "Pointer Sentinel Mixture Models"), text from Wikipedia articles, licensed under the
   Creative Commons Attribution-ShareAlike 3.0 Unported License (CC BY-SA 3.0),
   https://creativecommons.org/licenses/by-sa/3.0/ (see LICENSE.wikitext2).

2. docs, {counts["docs"]:,} bytes: excerpts of the Python reference documentation as shipped in CPython
   {version}'s pydoc_data/topics.py, {copyright_line};
   licensed under the Python Software Foundation License Version 2 (text below).

3. code, {counts["code"]:,} bytes: excerpts of these pure-Python modules of the CPython {version} standard
   library, {copyright_line}; licensed under the
   Python Software Foundation License Version 2 (text below):
{modules}

Changes made (the summary asked for by clause 3 of the PSF License Agreement, and the indication of changes
asked for by CC BY-SA 3.0): the sources were cut into chunks at blank lines, about 400,000 bytes of chunks
were kept from each source (spread evenly over it), and the chunks were interleaved; blank lines at the start
and trailing whitespace at the end of each chunk were removed. The text of the kept chunks is otherwise
unmodified.

Each part remains under its own licence: the WikiText-2 parts under CC BY-SA 3.0, the Python parts under the
PSF License Version 2. The selection and arrangement (the compilation itself) is offered under CC BY-SA 3.0.


The Python Software Foundation License Version 2, as shipped with CPython {version} (section B of its
LICENSE.txt, which includes the licences of the earlier Python releases it builds on):

{psf}"""


def manifest_json(manifest: dict) -> str:
    """The manifest as indented JSON with one line per chunk."""
    head = json.dumps({key: value for key, value in manifest.items() if key != "chunks"}, indent=1)
    rows = ",\n".join(f"  {json.dumps(row)}" for row in manifest["chunks"])
    return f'{head.removesuffix("}").rstrip()},\n "chunks": [\n{rows}\n ]\n}}\n'


def build(out_dir: Path) -> dict:
    """Write mixed.txt, mixed.sources.json and LICENSE.mixed into `out_dir`; return the manifest."""
    docs = sources()
    per_domain = {domain: spread(chunks(docs[domain]), BUDGET) for domain in DOMAINS}
    pieces = interleave(per_domain)
    data = "".join(text for _, _, text in pieces).encode("utf-8")
    ranges, offset = [], 0
    counts = dict.fromkeys(DOMAINS, 0)
    for domain, names, text in pieces:
        size = len(text.encode())
        ranges.append([offset, offset + size, domain, names])
        counts[domain] += size
        offset += size
    version = platform.python_version()
    manifest = {
        "file": "mixed.txt",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "python": version,
        "implementation": platform.python_implementation(),
        "builder": "scripts/build_mixed_calibration.py",
        "domain_bytes": counts,
        "inputs": {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in input_files().items()},
        "chunks": ranges,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mixed.txt").write_bytes(data)
    (out_dir / "mixed.sources.json").write_text(manifest_json(manifest), encoding="utf-8")
    (out_dir / "LICENSE.mixed").write_text(license_text(version, counts, len(data)), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "slimkit" / "data")
    args = parser.parse_args(argv)
    manifest = build(args.out_dir)
    print(f"{args.out_dir / 'mixed.txt'}: {manifest['bytes']:,} bytes, sha256 {manifest['sha256']}")
    print(f"built from {manifest['implementation']} {manifest['python']} ({sys.executable})")
    for domain, size in manifest["domain_bytes"].items():
        print(f"  {domain:5s} {size:9,d} bytes ({size / manifest['bytes']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
