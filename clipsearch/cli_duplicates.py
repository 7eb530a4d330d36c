"""`clipsearch duplicates`: exact and near-duplicate groups, and moving the extra copies away.

Its own module so the command's options and output live beside each other; `cli` registers it.
"""

from __future__ import annotations

import click

from clipsearch import jsonsafe
from clipsearch.cli import _db_default, _setup_logging, db_opt, handle_errors, main, verbose_opt


def _size(f) -> str:
    return f"{f.width}×{f.height}" if f.width and f.height else "size ?"


@main.command()
@db_opt
@click.option("--threshold", default="auto", show_default=True, metavar="auto|FLOAT",
              help="Cosine similarity at or above which two files are near-duplicates; auto derives it "
                   "from the collection's nearest-neighbour similarities.")
@click.option("--kind", type=click.Choice(["image", "video", "all"]), default="all", show_default=True,
              help="image: photos; video: whole videos; all: both, and photos that are frames of a video.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as one JSON object.")
@click.option("--move-to", "move_to", type=click.Path(file_okay=False),
              help="Move every group's non-keepers into this folder (created); the collection follows. "
                   "Never deletes.")
@click.option("--yes", "-y", is_flag=True, help="Move without asking.")
@verbose_opt
@handle_errors
def duplicates(db, threshold, kind, as_json, move_to, yes, verbose):
    """Groups of exact duplicates (same bytes) and near-duplicates (resized, re-encoded, cropped,
    burst shots, a photo that is a frame of a video), each with a suggested keeper and why.

    \b
    clipsearch duplicates                          list the groups; nothing changes
    clipsearch duplicates --threshold 0.97 --json  a fixed threshold, as JSON
    clipsearch duplicates --move-to ~/dups         move the non-keepers there (asks first)

    The keeper is a video over its frames, then the largest resolution, then the earliest date.
    A move is journalled: after a crash, run the same command (or `clipsearch index`) again.
    """
    _setup_logging(verbose)
    from clipsearch.collection import Collection

    col = Collection.open(db or _db_default(), device="cpu")
    report = col.duplicates(threshold=threshold, kind=kind)
    if as_json:
        click.echo(jsonsafe.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        click.echo(f"{len(report.groups)} groups, {sum(len(g.others) for g in report.groups)} duplicates "
                   f"among {report.items} files; threshold {report.threshold:.4f} ({report.how})")
        for n, g in enumerate(report.groups, 1):
            click.echo(f"\ngroup {n}{' (identical files)' if g.exact else ''}: keep {g.keeper.source}"
                       f"  [{g.reason}]")
            for f in g.others:
                how = "same bytes" if f.exact else f"similarity {f.similarity:.4f}"
                click.echo(f"  {'dup':>4} {f.source}  ({_size(f)}, {how})")
    if not move_to:
        return
    others = sum(len(g.others) for g in report.groups)
    if not others:
        click.echo("nothing to move", err=as_json)
        return
    if not yes and not click.confirm(f"move {others} files into {move_to}?", err=True):
        click.echo("nothing moved", err=True)
        return
    result = col.move_duplicates(move_to, threshold=threshold, kind=kind, groups=report.groups)
    click.echo(result.line(), err=as_json)
