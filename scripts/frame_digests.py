"""Frame digests of the input catalogue's complete-video cases, to compare two releases' outputs.

A release that changes how a run is organised (not what it computes) must hand the encoder the same
frames as the one before it. This script makes the evidence for the whole input catalogue
(tests/test_catalogue.py: containers, pixel formats, rotations, sizes, timing, audio, files, outputs)
plus two rotated phone clips with a face, so that generation runs too:

    # once, with this checkout: write every case's inputs into a folder
    python scripts/frame_digests.py build /tmp/cases
    # each release on the same inputs (PYTHONPATH picks the checkout), then compare the JSON files
    PYTHONPATH=/tmp/old python scripts/frame_digests.py run /tmp/cases /tmp/old.json --generator musetalk
    PYTHONPATH=.        python scripts/frame_digests.py run /tmp/cases /tmp/new.json --generator musetalk
    python scripts/frame_digests.py compare /tmp/old.json /tmp/new.json

``run`` passes each case through ``LipSync`` (smoke weights, PyTorch, dlib) into a lossless in-memory
sink and records the sha256 of the frames handed to the encoder (a lossy encoder's packets are not
reproducible bit for bit, so the encoded file is not compared). ``--old-detection`` keeps dlib at the
settings of releases before the per-clip detection scale (docs/FACES.md), for comparing across it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACE_FRAMES = 40


def build(folder: Path) -> None:
    """Write each case's inputs under ``folder`` and list them in ``folder/cases.json``."""
    sys.path.insert(0, str(ROOT))
    from tests.test_catalogue import CATALOGUE, FACE_SIZE, FPS, Tone, Video, _face_picture, write_video

    cases = {}
    for param in CATALOGUE:
        case = param.values[0]
        if not isinstance(case.expect, Video):
            continue  # an error case makes no frames
        where = folder / case.id
        where.mkdir(parents=True, exist_ok=True)
        try:
            video, audio = case.build(where)
        except Exception as exc:  # noqa: BLE001 - an encoder this machine lacks: say so, go on
            print(f"skipped {case.id}: {exc}")
            continue
        cases[case.id] = dict(video=str(video), audio=None if audio is None else str(audio), codec=case.codec,
                              output=case.output)
    for rotation in (90, 270):
        where = folder / f"face-rot{rotation}"
        where.mkdir(parents=True, exist_ok=True)
        video = write_video(where / "phone.mov", size=FACE_SIZE, frames=FACE_FRAMES, rotation=rotation,
                            picture=_face_picture(FACE_FRAMES), audio=Tone(FACE_FRAMES / FPS + 0.01, 48000, 2))
        cases[where.name] = dict(video=str(video), audio=None, codec="auto", output="out.mp4")
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    print(f"{len(cases)} cases in {folder}")


def run(folder: Path, out: Path, generator: str, steps: int, old_detection: bool) -> None:
    """Every case of ``folder`` through the ``latentmuse`` on ``sys.path``; digests to ``out``."""
    import numpy as np

    from latentmuse.runtime import faces, media
    from latentmuse.runtime.lipsync import LipSync

    if old_detection and hasattr(faces.DlibFrontEnd, "for_clip"):
        faces.DlibFrontEnd.for_clip = lambda self, *args: self
    import latentmuse

    print(f"latentmuse from {Path(latentmuse.__file__).parent}", flush=True)
    cases = json.loads((folder / "cases.json").read_text())
    result = {}
    with LipSync.from_weights("smoke", face_detector="dlib", backend="torch", generator=generator) as lipsync:
        for name, case in cases.items():
            sink = media.MemorySink()
            output = out.parent / f"{out.stem}.outputs" / name / case["output"]  # never written: the sink replaces it
            output.parent.mkdir(parents=True, exist_ok=True)
            try:
                report = lipsync(case["video"], output, case["audio"], sink=sink, codec=case["codec"], steps=steps)
            except Exception as exc:  # noqa: BLE001 - recorded: the other release must fail the same way
                result[name] = dict(error=f"{type(exc).__name__}: {exc}")
            else:
                digest = hashlib.sha256(b"".join(np.ascontiguousarray(f).tobytes() for f in sink.frames)).hexdigest()
                result[name] = dict(status=report.status, frames=len(sink.frames), generated=report.frames_processed,
                                    sha256=digest)
            print(name, result[name], flush=True)
    out.write_text(json.dumps(result, indent=1))


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    differ = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    generated = sum(1 for v in left.values() if v.get("generated"))
    print(f"{len(left)} and {len(right)} cases ({generated} with generated frames); {len(differ)} differ")
    for name in differ:
        print(f"  {name}: {left.get(name)} != {right.get(name)}")
    return 1 if differ or set(left) != set(right) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("run")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--generator", default="musetalk", choices=("musetalk", "latentsync"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--old-detection", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        build(args.folder)
    elif args.command == "run":
        run(args.folder, args.out, args.generator, args.steps, args.old_detection)
    else:
        return compare(args.a, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
