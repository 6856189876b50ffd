"""Summarise a py-spy raw profile (hack/bench.py --profile): where each thread's samples go.

    .venv/bin/python hack/bench_profile.py PROFILE.txt [--thread engine] [--top 25] [--rate 200]

Prints, per thread name, its samples in seconds; then for the chosen threads the functions by
inclusive time (a function counted once per sample however deep it recurs) and by self time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, samples) per distinct stack."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread ") else "?"
        stacks.append((thread, [_short(f) for f in frames[1:]], int(count)))
    return stacks


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"].split("site-packages/")[-1]
    return f"{match['func']} ({file})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--thread", default="", help="only threads whose name contains this")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=200, help="py-spy's --rate")
    args = parser.parse_args()
    stacks = parse(args.profile)
    per_thread: Counter[str] = Counter()
    for thread, _, count in stacks:
        per_thread[thread] += count
    for thread, count in per_thread.most_common():
        print(f"{count / args.rate:8.2f} s  {thread}")
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for thread, frames, count in stacks:
        if args.thread not in thread or not frames:
            continue
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title} ({args.thread or 'all threads'}):")
        for frame, count in table.most_common(args.top):
            print(f"{count / args.rate:8.2f} s  {frame}")


if __name__ == "__main__":
    main()
