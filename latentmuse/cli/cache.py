"""``latentmuse cache ls|clear``: the face-track cache (runtime/facecache.py) and MuseTalk's latent
cache beside it (runtime/latentcache.py); docs/SCALE.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..runtime.cachedir import default_cache_dir
from .console import PlainTable, make_console, plain

app = typer.Typer(help="The face-track and latent cache: list or clear its entries.", no_args_is_help=True)
console = make_console()

CacheOption = Annotated[Optional[Path], typer.Option("--cache", metavar="DIR", help=f"Cache folder (default: {default_cache_dir()}, $LATENTMUSE_CACHE).")]


def _stores(cache: Path | None):
    from ..runtime.facecache import FaceCache
    from ..runtime.latentcache import LatentCache

    root = cache or default_cache_dir()
    return FaceCache(root), LatentCache(root)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.command("ls")
def ls(cache: CacheOption = None) -> None:
    """List the face-track entries (video, frames, front end, size, age) and the latents' total."""
    store, latents = _stores(cache)
    entries = store.entries()
    if not entries:
        console.print(f"{plain(store.folder)}: no entries")
    else:
        _face_table(store, entries)
    files = latents.entries()
    if files:
        total = sum(p.stat().st_size for p in files)
        console.print(f"{plain(latents.folder)}: {len(files)} latent entr{'y' if len(files) == 1 else 'ies'} "
                      f"(MuseTalk's VAE latents), {_size(total)}")


def _face_table(store, entries) -> None:
    table = PlainTable("entry", "video (as last seen)", "frames", "front end", "face", "size", "written",
                       title=f"{store.folder}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
                             f"{_size(sum(e.bytes for e in entries))}")
    for e in entries:
        table.add_row(e.path.name[:12], e.video, str(e.frames), str(e.settings.get("front_end", "?")),
                      str(e.settings.get("face", "?")), _size(e.bytes),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified)))
    console.print(table)


@app.command("clear")
def clear(cache: CacheOption = None) -> None:
    """Delete every entry (and crashed writers' temporary files); other files in the folders are kept."""
    for store in _stores(cache):
        count, freed = store.clear()
        console.print(f"{plain(store.folder)}: deleted {count} file{'s' if count != 1 else ''} ({_size(freed)})")
