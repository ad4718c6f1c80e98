"""Seconds from launch to the first frame handed to the encoder, for a ``latentmuse run`` command line.

The report's ``first_frame_seconds`` counts from the start of the run; a user waits from the moment
the command is launched (the interpreter, the imports, parsing). This runs the real command line in
this process and prints both, measuring launch as the process's start time (Linux: /proc/self/stat):

    python scripts/first_frame.py run CLIP -o OUT.mp4 --weights smoke --backend ort --engines DIR \\
        --generator musetalk --face-detector dlib --no-cache

It wraps one call, the encoder thread's ``write`` (runtime/overlap.py), and changes nothing else.
"""

from __future__ import annotations

import os
import sys
import time


def process_age() -> float:
    """Seconds since this process started."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


LAUNCH = time.perf_counter() - process_age()


def main() -> None:
    from latentmuse.cli import main as cli
    from latentmuse.runtime.overlap import BackgroundSink

    first: list[float] = []
    write = BackgroundSink.write

    def timed(self, frame):
        if not first:
            first.append(time.perf_counter() - LAUNCH)
        return write(self, frame)

    BackgroundSink.write = timed
    sys.argv = ["latentmuse", *sys.argv[1:]]
    try:
        cli()
    finally:
        if first:
            print(f"first frame handed to the encoder {first[0]:.2f} s after launch", file=sys.stderr)


if __name__ == "__main__":
    main()
