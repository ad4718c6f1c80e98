"""A cut-down copy of dlib's 68-point shape predictor: the first N regression trees of each cascade level.

    python3 scripts/small_dlib_predictor.py [--trees 50] [SRC] OUT[.xz]

dlib's iBUG model (Debian libdlib-data, /usr/share/dlib/shape_predictor_68_face_landmarks.dat) is
99.7 MB, 60 MiB even xz-compressed: it cannot travel to a GPU machine beside the wheels (64 MiB per
call, docs/GPU.md). Its 15 cascade levels are gradient-boosted forests of 500 trees each, fitted with
shrinkage, so the first trees of a level carry most of its correction: keeping every level but only
its first N trees gives a valid predictor of about N/500 of the size whose landmarks stay within a few
pixels of the full model's (50 trees: 9.6 MiB, 6.1 MiB as .xz, landmarks 1.5 px from the full
model's on average on the demo clip's face). The GPU check compares CUDA against the CPU with the same
predictor, so it does not need the full model's accuracy. An OUT ending in .xz is written compressed.

The file is dlib's serialization (dlib/image_processing/shape_predictor.h): every scalar, floats
included (as a mantissa and an exponent), is a packed integer whose first byte holds its length in
the low nibble, so the file can be walked without decoding values, and the kept trees are copied
byte for byte.
"""

from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path

DEFAULT_SOURCE = Path("/usr/share/dlib/shape_predictor_68_face_landmarks.dat")


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def skip(self, count: int = 1) -> None:
        """Skip ``count`` packed integers."""
        data, pos = self.data, self.pos
        for _ in range(count):
            pos += (data[pos] & 0x0F) + 1
        self.pos = pos

    def integer(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += size + 1
        return -value if head & 0x80 else value

    def matrix(self) -> None:
        rows, cols = -self.integer(), -self.integer()  # dlib writes matrix sizes negated
        self.skip(2 * rows * cols)  # float = mantissa + exponent

    def tree(self) -> None:
        self.skip(4 * self.integer())  # splits: idx1, idx2, thresh (2)
        for _ in range(self.integer()):  # leaf values: one column per leaf
            self.matrix()


def pack(value: int) -> bytes:
    """dlib's packed integer (non-negative)."""
    body = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "little")
    return bytes([len(body)]) + body


def cut(data: bytes, trees: int) -> tuple[bytes, int, int]:
    """(the predictor keeping the first ``trees`` trees of each level, levels, trees per level)."""
    r = Reader(data)
    if r.integer() != 1:
        raise ValueError("not a version-1 dlib shape_predictor")
    r.matrix()  # initial shape
    out = [data[:r.pos]]
    levels = r.integer()
    out.append(pack(levels))
    per_level = 0
    for _ in range(levels):
        per_level = r.integer()
        keep = min(trees, per_level)
        out.append(pack(keep))
        start = r.pos
        for i in range(per_level):
            r.tree()
            if i + 1 == keep:
                out.append(data[start:r.pos])
    tail = r.pos
    for _ in range(r.integer()):  # anchor_idx: per level, one index per feature pixel
        r.skip(r.integer())
    for _ in range(r.integer()):  # deltas: per level, one (x, y) float pair per feature pixel
        r.skip(4 * r.integer())
    if r.pos != len(data):
        raise ValueError(f"unexpected layout: {len(data) - r.pos} bytes left after the deltas")
    out.append(data[tail:])  # anchor indices and deltas of every level, unchanged
    return b"".join(out), levels, per_level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="small_dlib_predictor.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("out", type=Path)
    parser.add_argument("--trees", type=int, default=50, help="trees kept per cascade level (default 50 of 500)")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"small_dlib_predictor: {args.source} not found (apt-get install libdlib-data)", file=sys.stderr)
        return 1
    small, levels, per_level = cut(args.source.read_bytes(), args.trees)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(lzma.compress(small) if args.out.suffix == ".xz" else small)
    print(f"{args.out}: {levels} levels x {min(args.trees, per_level)} of {per_level} trees, "
          f"{len(small) / 2**20:.1f} MiB ({args.out.stat().st_size / 2**20:.1f} MiB written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
