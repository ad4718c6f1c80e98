"""The heap trimmer's schedule (a recording stand-in for malloc_trim) and the real one on glibc."""

from __future__ import annotations

import platform

import pytest

from latentmuse.runtime.heap import HeapTrimmer


def test_trims_once_every_n_frames_counting_batches():
    calls: list[int] = []
    heap = HeapTrimmer(every=3, trim=lambda pad: calls.append(pad) or 1)
    for _ in range(7):
        heap.tick()
    assert calls == [0, 0] and heap.trims == 2  # after frames 3 and 6; frame 7 waits
    heap.tick(5)  # a batch of 5 crosses the threshold once
    assert heap.trims == 3
    heap.tick(2)
    assert heap.trims == 3


def test_without_malloc_trim_it_does_nothing():
    heap = HeapTrimmer(every=1, trim=None)
    heap._trim = None  # a C library without malloc_trim (musl, macOS)
    heap.tick(10)
    assert not heap.available and heap.trims == 0


def test_every_must_be_positive():
    with pytest.raises(ValueError):
        HeapTrimmer(every=0)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_malloc_trim_is_found_and_called():
    heap = HeapTrimmer(every=2)
    assert heap.available
    heap.tick(2)
    assert heap.trims == 1
