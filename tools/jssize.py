"""Size check for the bundled player: conservative minification + gzip.

Usage: python3 tools/jssize.py [FILE] [--limit BYTES]

The minifier only removes comments and redundant whitespace (no renaming), so the number it
prints is an upper bound of what a real minifier (terser) reaches. It understands strings,
template literals and regular-expression literals well enough for our own code, and when
`node` is installed it checks that the stripped output still parses.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "cxrelay" / "static" / "cxrelay.js"
LIMIT = 12 * 1024
# After one of these characters a '/' starts a regular expression, not a division.
REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^") | {""}
REGEX_KEYWORDS = {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "case"}


def _skip_string(src: str, i: int) -> int:
    """Index just past the string or template literal starting at src[i]."""
    quote = src[i]
    i += 1
    depth = 0
    while i < len(src):
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if quote == "`" and c == "$" and src[i + 1 : i + 2] == "{":
            depth += 1  # nested expressions are copied verbatim: good enough for a size bound
        elif quote == "`" and c == "}" and depth:
            depth -= 1
        elif c == quote and not depth:
            return i + 1
        i += 1
    raise ValueError("unterminated string")


def _skip_regex(src: str, i: int) -> int:
    i += 1
    in_class = False
    while i < len(src):
        c = src[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "/" and not in_class:
            i += 1
            while i < len(src) and src[i].isalpha():
                i += 1
            return i
        i += 1
    raise ValueError("unterminated regex")


def _regex_allowed(out: list[str]) -> bool:
    text = "".join(out[-3:]).rstrip()
    if not text or text[-1] in REGEX_AFTER:
        return True
    word = re.search(r"[A-Za-z_$][\w$]*$", text)
    return bool(word and word.group(0) in REGEX_KEYWORDS)


def strip(src: str) -> str:
    """Remove comments, then blank lines and indentation (newlines are kept for ASI)."""
    out: list[str] = []
    i = 0
    while i < len(src):
        c = src[i]
        two = src[i : i + 2]
        if two == "//":
            i = src.find("\n", i)
            i = len(src) if i < 0 else i
        elif two == "/*":
            i = src.index("*/", i) + 2
        elif c in "'\"`":
            end = _skip_string(src, i)
            out.append(src[i:end])
            i = end
        elif c == "/" and _regex_allowed(out):
            end = _skip_regex(src, i)
            out.append(src[i:end])
            i = end
        else:
            out.append(c)
            i += 1
    lines = (line.strip() for line in "".join(out).splitlines())
    return "\n".join(line for line in lines if line)


def node_parses(code: str) -> bool | None:
    node = shutil.which("node")
    if not node:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".mjs", delete=False) as f:
        f.write(code)
    try:
        return subprocess.run([node, "--check", f.name], capture_output=True).returncode == 0
    finally:
        Path(f.name).unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--limit", type=int, default=LIMIT)
    args = ap.parse_args()
    src = args.file.read_text()
    small = strip(src)
    size = len(gzip.compress(small.encode(), 9))
    print(f"{args.file.name}: {len(src)} B source, {len(small)} B stripped, {size} B gzipped "
          f"(limit {args.limit})")
    if node_parses(small) is False:
        print("stripped output does not parse: the size is not trustworthy", file=sys.stderr)
        return 2
    return 0 if size <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
