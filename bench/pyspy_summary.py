"""Summarize py-spy's raw (collapsed stack) output: where the server's time goes."""

from __future__ import annotations

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def parse_line(line: str) -> tuple[list[str], int] | None:
    """'a (f.py:1);b (g.py:2) 17' -> (['a (f.py)', 'b (g.py)'], 17); line numbers dropped."""
    line = line.rstrip()
    if not line or " " not in line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None
    frames = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw.strip())
        if m:
            path = m.group("file")
            for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
                if marker in path:
                    path = path.split(marker, 1)[1]
            frames.append(f"{m.group('func')} ({path})")
        else:
            frames.append(raw.strip())
    return frames, n


def summarize_raw(text: str, top: int = 30) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is None:
            continue
        frames, n = parsed
        total += n
        if frames:
            self_time[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self time (leaf frames):"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    out += ["", "inclusive time (frame anywhere on the stack):"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)
