"""The `clipsearch` command line: index, watch, search, browse, info, models, fit-transforms, optimize,
serve.

Errors print one line and a hint (exit 2 for usage errors, 1 otherwise); --verbose shows the
traceback. Flags override CLIPSEARCH_* environment variables, which override defaults.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

import click

from clipsearch import jsonsafe
from clipsearch.errors import ClipsearchError, MissingDependency, UsageError

DB_HELP = ("Collection directory or object-storage URI (s3://bucket/prefix). "
           "Default: $CLIPSEARCH_DB, else $XDG_DATA_HOME/clipsearch/default.")


def _db_default() -> str:
    from clipsearch.collection import default_db_dir

    return str(default_db_dir())


def handle_errors(fn):
    """Turn ClipsearchError into a one-line message + hint; keep the traceback for --verbose.

    A storage or network failure that reached here without being named (a full disk while
    writing a thumbnail, a damaged table file read by a ranker) is named after the --db."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            try:
                return fn(*args, **kwargs)
            except ClipsearchError:
                raise
            except Exception as e:
                from clipsearch.failures import storage_failure

                err = storage_failure(e, str(kwargs.get("db") or _db_default()))
                if err is None:
                    raise
                raise err from e
        except ClipsearchError as e:
            if verbose:
                raise
            click.secho(f"error: {e}", fg="red", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning, module="open_clip")


verbose_opt = click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and per-file details.")
db_opt = click.option("--db", "db", envvar="CLIPSEARCH_DB", default=None, help=DB_HELP,
                      type=click.Path(file_okay=False))
device_opt = click.option("--device", envvar="CLIPSEARCH_DEVICE", default="auto", show_default=True,
                          help="auto picks cuda, then mps, then cpu.")
backend_opt = click.option("--backend", envvar="CLIPSEARCH_BACKEND", default="auto", show_default=True,
                           type=click.Choice(["auto", "torch", "onnx", "openvino"]),
                           help="Where the model runs. auto: PyTorch on a GPU; on a CPU the fastest of "
                                "ONNX Runtime / OpenVINO that matched PyTorch when the model was exported.")
precision_opt = click.option("--precision", envvar="CLIPSEARCH_PRECISION", default="auto", show_default=True,
                             type=click.Choice(["auto", "fp32", "bf16", "fp16", "int8"]),
                             help="Inference precision: onnx runs fp32/int8, openvino fp32/bf16/fp16, "
                                  "torch fp32 (fp16 on CUDA). Refused if it drifts from PyTorch.")


def with_asr(fn):
    """--asr, --asr-model and --language: speech in videos and audio files (`clipsearch.speech`)."""
    fn = click.option("--language", default=None, metavar="CODE",
                      help="Spoken language for Whisper (en, de, fr...). Default: detected.")(fn)
    fn = click.option("--asr-model", default=None, metavar="NAME|PATH",
                      help="Whisper model name (tiny, base, small, large-v3...), a CTranslate2 Whisper "
                           "folder, or 'pocketsphinx'. Default: base if cached, else PocketSphinx.")(fn)
    return click.option("--asr", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                        help="Transcribe speech in videos and audio files: auto = when an engine with "
                             "weights is here.")(fn)


def asr_options(asr: str, asr_model: str | None, language: str | None) -> dict[str, Any]:
    """The indexers' options for speech (only what differs from the defaults)."""
    out: dict[str, Any] = {} if asr == "auto" else {"asr": asr}
    if asr_model:
        out["asr_model"] = asr_model
    if language:
        out["language"] = language
    return out


def with_backend(fn):
    """--backend and --precision on a command that embeds."""
    return backend_opt(precision_opt(fn))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clipsearch")
def main() -> None:
    """Search your own photos, videos and documents by meaning.

    \b
    clipsearch index ~/Pictures             embed every image, video and PDF under a folder
    clipsearch search "a dog on a beach"    ranked results: score, path
    clipsearch search --image q.jpg -k 20   image → image
    clipsearch search "a goal" --moments    where in which video
    clipsearch search "revenue" --kind doc  which page of which document
    clipsearch browse                       no query: the most atypical items (outliers) first
    clipsearch watch ~/Pictures             keep the collection current as files change
    clipsearch serve                        browser UI + HTTP API
    """


name_opt = click.option("--name", default=None, metavar="NAME",
                        help="The collection's name, shown by `info` and the UI's status line; kept "
                             "across runs. Default: the folder name of the first indexed root.")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@db_opt
@click.option("--model", envvar="CLIPSEARCH_MODEL", default=None,
              help="ARCH/TAG, hf-hub:ORG/REPO, ARCH with --checkpoint, a preset, or clipsearch-tiny. "
                   "Default for a new collection: ViT-B-32/laion2b_s34b_b79k.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Local open_clip state dict (.pt/.bin/.safetensors) for --model ARCH.")
@device_opt
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Decode threads. Default: one per core (at least 2).")
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Skip images larger than this many pixels (decompression-bomb guard). "
                   "Default 89,478,485.")
@click.option("--decode", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Where JPEGs are decoded and resized: auto uses the GPU (nvJPEG) when the model "
                   "runs on CUDA.")
@click.option("--fps", default=None, type=click.FloatRange(0.05, 30),
              help="Video frames sampled per second. Default 1, or 2 for videos under 2 minutes.")
@click.option("--max-text-chunks", default=None, type=click.IntRange(0),
              help="Text rows per document: a bigger file is indexed up to this many chunks, with a "
                   "note in the summary. 0 = no cap. Default 20,000.")
@click.option("--strict", is_flag=True,
              help="Exit non-zero when any file was skipped or a root was not found.")
@click.option("--follow-symlinks/--no-follow-symlinks", default=None,
              help="Follow symlinks that lead outside the indexed folders; their targets become "
                   "roots. Default: only links to targets inside them. Saved with the collection.")
@click.option("--include-hidden/--no-include-hidden", default=None,
              help="Index hidden files and folders (names starting with a dot). Default: skip them. "
                   "Saved with the collection.")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Leave out what this gitignore-style pattern matches, relative to each root "
                   "(repeatable: '*.tmp', 'node_modules/', '/raw'). Added to the saved ones.")
@click.option("--clear-excludes", is_flag=True, help="Forget the saved --exclude patterns first.")
@click.option("--verify", is_flag=True,
              help="Re-hash every file, re-embedding any whose content changed behind an unchanged "
                   "size and mtime.")
@click.option("--prune-missing", is_flag=True,
              help="Remove the rows of roots that are missing or now empty (kept by default: "
                   "an unplugged drive).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: threads in this process. ray: Ray Data tasks + an embedding actor pool.")
@click.option("--ray-address", default=None, help="Ray cluster address (with --engine ray); default: local.")
@click.option("--gpus-per-worker", default=0.0, type=click.FloatRange(0), help="With --engine ray.")
@click.option("--commit-every", default=256, hidden=True, type=click.IntRange(1),
              help="Files per commit (smaller: less lost on a crash, more versions).")
@click.option("--commit-rows", default=5000, hidden=True, type=click.IntRange(1),
              help="Rows per commit; a big document is committed in batches of this many rows.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--ocr", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Read the words in images, scanned pages and video frames. Default: "
                   "$CLIPSEARCH_OCR, else auto (on when the engine, clipsearch[ocr], is installed).")
@name_opt
@with_asr
@with_backend
@verbose_opt
@handle_errors
def index(paths, db, model, checkpoint, device, batch_size, workers, max_pixels, decode, fps, max_text_chunks,
          strict, follow_symlinks, include_hidden, exclude, clear_excludes, verify, prune_missing, engine,
          ray_address, gpus_per_worker, commit_every, commit_rows, quiet, ocr, name, asr, asr_model, language,
          backend, precision, verbose):
    """Index files and folders: embed what is new or changed, drop what is gone.

    Without PATH, every root indexed before is updated. Safe to stop (Ctrl-C) and re-run:
    committed work is kept and the next run resumes. Skipped files are listed with --verbose
    and always written to DB/skipped.log. Hidden files, the collection itself and caches are
    never indexed; see --exclude and .clipsearchignore for the rest.
    """
    _setup_logging(verbose)
    if engine == "ray" and decode == "gpu":
        raise UsageError("--decode gpu works with --engine local only",
                         hint="Ray workers decode on their CPUs; drop --decode or use --engine local")
    if decode == "gpu":
        from clipsearch.encoders import pick_device
        from clipsearch.gpu_decode import check_mode

        check_mode(decode, pick_device(device))
    db = db or _db_default()
    col = _open_for_indexing(db, paths, model, checkpoint, device, backend, precision, name)
    options: dict[str, Any] = {"fps": fps} if fps else {}
    options.update(asr_options(asr, asr_model, language))
    walk = {"follow_symlinks": follow_symlinks, "include_hidden": include_hidden,
            "exclude": list(exclude), "clear_excludes": clear_excludes, "verify": verify,
            "prune_missing": prune_missing}
    if max_text_chunks is not None:
        options["max_text_chunks"] = max_text_chunks
    if engine == "ray":
        from clipsearch.engines.ray_engine import index_with_ray

        report = index_with_ray(col, list(paths), address=ray_address, workers=workers,
                                gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                                max_pixels=max_pixels, options=options, progress=not quiet,
                                commit_files=commit_every, **walk)
    else:
        report = col.add(list(paths), batch_size=batch_size, workers=workers, progress=not quiet,
                         max_pixels=max_pixels, options=options, commit_files=commit_every,
                         decode=decode, commit_rows=commit_rows, ocr=ocr, **walk)
    click.echo(report.summary())
    if report.ocr_problem:
        click.secho(f"warning: OCR: {report.ocr_problem}", fg="yellow", err=True)
    for root, reason in report.vanished:
        click.secho(f"warning: {root}: {reason}; not updated, its rows are kept", fg="yellow", err=True)
    if report.vanished:
        click.echo("hint: plug the drive back in and re-run, or pass --prune-missing to remove "
                   "those rows", err=True)
    for pruned in report.pruned_roots:
        click.echo(f"  pruned {os.fsdecode(pruned)}: missing, its rows removed and the root forgotten")
    for path, note in report.notes:
        click.echo(f"  note: {path}: {note}")
    if report.skipped:
        if verbose:
            for path, reason in report.skipped:
                click.echo(f"  skipped {path}: {reason}")
        else:
            click.echo(f"  {len(report.skipped)} skipped; reasons in {col.path / 'skipped.log'} "
                       "(or use --verbose)")
    if report.interrupted:
        sys.exit(130)
    if report.unexpected:
        click.echo(f"error: {report.unexpected} file(s) skipped on an unexpected error", err=True)
        click.echo("hint: that is a bug in clipsearch: please report it with the output of this "
                   "run with --verbose (it shows the traceback)", err=True)
        sys.exit(1)
    if strict and (report.skipped or report.vanished):
        sys.exit(1)


def _open_for_indexing(db: str, paths: tuple[str, ...], model: str | None, checkpoint: str | None,
                       device: str | None, backend: str | None, precision: str | None,
                       name: str | None) -> Any:
    """The collection an `index` or `watch` run writes: created for PATHs where there is none
    (a mistyped PATH leaves nothing behind), named when --name is given."""
    from clipsearch.collection import Collection, checked_name, resolve_roots

    if name is not None:
        checked_name(name)  # a bad name stops before anything is created
    if paths:
        if not Collection.exists(db):
            resolve_roots(paths)
        return Collection.open_or_create(db, model=model, checkpoint=checkpoint, device=device, name=name,
                                         backend=backend, precision=precision)
    col = Collection.open(db, device=device, model=model, checkpoint=checkpoint, backend=backend,
                          precision=precision)
    if name is not None:
        col.name = name
    return col


rescan_opt = click.option("--rescan-every", default=300.0, show_default=True, type=click.FloatRange(1),
                          metavar="SECONDS",
                          help="Full rescan this often, as a safety net; where the platform's watch limit "
                               "is reached, rescans are all there is.")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path())
@db_opt
@click.option("--model", envvar="CLIPSEARCH_MODEL", default=None,
              help="For a new collection, as with `index`. Default: ViT-B-32/laion2b_s34b_b79k.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Local open_clip state dict for --model ARCH.")
@device_opt
@click.option("--workers", default=None, type=click.IntRange(1, 64), help="Decode threads, as with `index`.")
@rescan_opt
@click.option("--quiet-seconds", default=1.5, show_default=True, type=click.FloatRange(0.05),
              help="A batch of changes is indexed after this long without new ones...")
@click.option("--max-wait", default=10.0, show_default=True, type=click.FloatRange(0.05),
              help="...or this long after its first change, under a steady stream of them.")
@click.option("--ocr", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Read the words in images, scanned pages and video frames. Default: "
                   "$CLIPSEARCH_OCR, else auto (on when the engine, clipsearch[ocr], is installed).")
@name_opt
@with_asr
@with_backend
@verbose_opt
@handle_errors
def watch(paths, db, model, checkpoint, device, workers, rescan_every, quiet_seconds, max_wait, ocr, name,
          asr, asr_model, language, backend, precision, verbose):
    """Keep the collection current as files appear, change, move and vanish.

    Without PATH, watches every root indexed before. Starts with one catch-up run (what changed
    while nothing watched), then indexes each batch of changes as `index` would, printing one
    summary line per run. The walk rules apply (hidden files, --exclude, .clipsearchignore).
    Ctrl-C (or SIGTERM) stops after the run in progress; a second Ctrl-C cuts it short, and the
    next start resumes it. Another process indexing the same collection is waited for.
    """
    _setup_logging(verbose)
    import signal
    import threading

    from clipsearch.watch import Watcher

    if max_wait < quiet_seconds:
        raise UsageError(f"--max-wait {max_wait:g} is shorter than --quiet-seconds {quiet_seconds:g}",
                         hint="give --max-wait at least as long as --quiet-seconds")
    db = db or _db_default()
    col = _open_for_indexing(db, paths, model, checkpoint, device, backend, precision, name)
    interrupted: list[bool] = []

    def on_run(report) -> None:
        click.echo(report.summary())
        interrupted[:] = [report.interrupted]

    add_options: dict[str, Any] = {"ocr": ocr, **({"workers": workers} if workers else {})}
    if asr_options(asr, asr_model, language):
        add_options["options"] = asr_options(asr, asr_model, language)
    watcher = Watcher(col, list(paths), quiet=quiet_seconds, max_wait=max_wait, rescan_every=rescan_every,
                      on_run=on_run, add_options=add_options)
    stop = threading.Event()

    def stop_soon(signum, _frame) -> None:
        click.echo("stopping after the run in progress (Ctrl-C again cuts it short; the next start "
                   "resumes it)", err=True)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, stop_soon)
    signal.signal(signal.SIGTERM, stop_soon)
    if watcher.run_roots():  # else run() says what to give
        click.echo(f"watching {', '.join(watcher.run_roots())} for {col.path} (Ctrl-C to stop)", err=True)
    watcher.run(stop)
    click.echo("stopped", err=True)
    if any(interrupted):
        sys.exit(130)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@db_opt
@verbose_opt
@handle_errors
def remove(paths, db, verbose):
    """Forget files and folders: their rows, and the saved roots they are or hold.

    Needs no model. A file inside a folder that stays indexed comes back on the next
    `index` of that folder: --exclude it or list it in a .clipsearchignore to keep it out.
    """
    _setup_logging(verbose)
    from clipsearch.collection import Collection

    col = Collection.open(db or _db_default(), device="cpu")
    before = set(col.roots)
    n = col.remove(list(paths))
    dropped = sorted(before - set(col.roots))
    click.echo(f"removed {n} files" + (f"; forgot roots: {', '.join(dropped)}" if dropped else ""))
    if not n and not dropped:
        click.echo("  nothing indexed there (paths are matched as given and as real paths)")


@main.command()
@click.argument("query", required=False)
@click.option("--image", "image", type=click.Path(dir_okay=False), multiple=True,
              help="Query image (image → image); repeatable, each a term of weight 1.")
@click.option("--not", "negative", metavar="TEXT", multiple=True,
              help="Push this away (words, or id:ITEM); repeatable.")
@click.option("--not-image", "negative_image", type=click.Path(dir_okay=False), multiple=True,
              help="Push this image away; repeatable.")
@db_opt
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10000), help="Results.")
@click.option("--offset", default=0, type=click.IntRange(0), help="Skip this many results (paging).")
@click.option("--under", type=click.Path(file_okay=False), help="Only results inside this folder.")
@click.option("--kind", type=click.Choice(["image", "video", "moment", "doc", "frame", "page", "ocr",
                                          "speech", "audio", "all"]),
              help="Restrict to one kind. Default: images, videos (best frame) and document pages. "
                   "ocr: the words read in pictures; speech: what is said in videos and audio files, "
                   "and when.")
@click.option("--words-only", is_flag=True,
              help="Rank by the words in items alone (document text, OCR, speech).")
@click.option("--visual-only", is_flag=True, help="Rank by what items show alone (no words).")
@click.option("--moments", is_flag=True, help="Video moments: where in which video (same as --kind moment).")
@click.option("--whiten", is_flag=True, help="Whitened space for image → image (fitted transform).")
@click.option("--center", is_flag=True, help="Modality-gap centering (fitted transform).")
@click.option("--invert", is_flag=True, help="Textual inversion (OTI) of the query image.")
@click.option("--hybrid", is_flag=True, help="Fuse keyword matches (paths, text) with vector ranks.")
@click.option("--sort", type=click.Choice(["score", "typicality", "date", "-date"]), default="score",
              show_default=True, help="date: the best hits by score, oldest first; -date: newest first.")
@click.option("--after", metavar="DATE", help="Taken on or after DATE: 2024, 2024-08, 2024-08-03.")
@click.option("--before", metavar="DATE", help="Taken before DATE's end (--before 2024-08: by August's end).")
@click.option("--camera", metavar="TEXT", help="Camera make/model contains TEXT (any case).")
@click.option("--place", metavar="TEXT", help="City, region or country contains TEXT (any case).")
@click.option("--near", metavar="LAT,LON[,KM]", help="Taken within KM (default 10) of a point.")
@click.option("--format", "fmt", metavar="FMT", help="File format: jpg, png, heic, mp4, pdf...")
@click.option("--min-pixels", type=click.IntRange(0), help="Width × height at least this.")
@click.option("--where", metavar="SQL", help="Any SQL predicate over the documented columns (README).")
@click.option("--min-relevance", "min_relevance", metavar="auto|FLOAT|off", default="off", show_default=True,
              help="Drop hits below this calibrated relevance (0..1; auto = 0.5, see docs/relevance.md).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of hits.")
@device_opt
@with_backend
@verbose_opt
@handle_errors
def search(query, image, negative, negative_image, db, k, offset, under, kind, words_only, visual_only,
           moments, whiten, center, invert, hybrid, sort, after, before, camera, place, near, fmt, min_pixels,
           where, min_relevance, as_json, device, backend, precision, verbose):
    """Search the collection by text, by image, or both. The collection knows its own model.

    QUERY may combine terms: "2:golden retriever + ./pool.jpg - indoors" (README, "Query
    operators"); quote a term to keep a " - " in its words.

    \b
    clipsearch search "beach" --after 2024-08 --before 2024-08   last August's beach photos
    clipsearch search "sunset" --place lisbon --sort -date        newest sunsets in Lisbon
    clipsearch search "dog" --near 38.72,-9.14,25 --camera iphone
    clipsearch search "cat" --where "width >= 4000 AND lens IS NOT NULL"
    clipsearch search "golden retriever" --image pool.jpg --not indoors
    clipsearch search "a red star" --min-relevance auto            only the hits that stand out
    """
    _setup_logging(verbose)
    from clipsearch import query_terms
    from clipsearch.collection import Collection
    from clipsearch.relevance import describe_cut, parse_min_relevance

    threshold = parse_min_relevance(min_relevance, "--min-relevance")
    if query is None and not image:
        raise UsageError("give a QUERY, --image FILE, or both", hint='clipsearch search "a dog on a beach"')
    terms = query_terms.parse_query(query) if query is not None else []
    terms += [query_terms.image(p) for p in image]
    for words in negative:
        terms += query_terms.negated(query_terms.parse_query(words, name="--not"))
    terms += [query_terms.image(p, -1.0) for p in negative_image]
    col = Collection.open(db or _db_default(), device=device, backend=backend, precision=precision)
    if moments:
        kind = "moment"
    hits = col.search(terms=terms, k=k, kind=kind, under=under, offset=offset, whiten=whiten,
                      center=center, invert=invert, hybrid=hybrid or kind == "doc",
                      sort=None if sort == "score" else sort, after=after, before=before, camera=camera,
                      place=place, near=near, format=fmt, min_pixels=min_pixels, where=where,
                      words_only=words_only, visual_only=visual_only, min_relevance=threshold)
    for line in hits.warnings:
        click.echo(f"warning: {line}", err=True)
    dated = sort in ("date", "-date") or any(v is not None for v in (after, before, camera, place, near))
    _echo_hits(col, hits, as_json, dated=dated)
    note = describe_cut(len(hits), len(hits.weaker), hits.would_cut, threshold)
    if note and not as_json:  # --json: each hit has its relevance; the output stays one JSON value
        click.echo(f"note: {note}", err=True)


def _echo_hits(col, hits: list, as_json: bool, score_format: str = "7.4f", dated: bool = False) -> None:
    """Hits as one JSON array, or one line each: score, kind, file and where in it; `dated`
    adds when (UTC day), where and with what camera it was taken."""
    if as_json:
        click.echo(jsonsafe.dumps([h.to_dict() for h in hits], ensure_ascii=False))
        return
    if not hits:
        click.echo("no results" + ("" if col.store.count() else " (the collection is empty)"))
        return
    for h in hits:
        where = ""
        if h.t_start is not None:
            where = f"  [{_ts(h.t_start)}–{_ts(h.t_end)}]" if h.t_end is not None else f"  [{_ts(h.t_start)}]"
        if h.page is not None:
            where += f"  p.{h.page}"
        if dated:
            where += "".join(f"  {v}" for v in ((h.extra.get("taken_at") or "")[:10], h.extra.get("place"),
                                                 h.extra.get("camera")) if v)
        rel = f"  r={h.relevance:.2f}" if h.relevance is not None else ""
        click.echo(f"{h.score:{score_format}}{rel}  {h.kind:<11} {h.source}{where}")
        if h.companion:
            click.echo(f"         Live Photo with {h.companion}")
        if h.text and (h.kind in ("speech", "moment") or h.extra.get("words") == "speech"):
            heard = f"{h.extra['evidence']}: " if h.extra.get("evidence") else ""
            click.echo(f"         {heard}said {h.text[:100]!r}")
        elif h.text and (h.kind in ("doc", "ocr") or h.extra.get("words")):
            click.echo(f"         {h.text[:100]!r}")
        elif h.kind == "moment" and h.extra.get("evidence"):
            click.echo(f"         {h.extra['evidence']}")


@main.command()
@db_opt
@click.option("--by", "by", type=click.Choice(["typicality", "date", "topics"]), default="typicality",
              show_default=True,
              help="typicality: ordered by --order; date: one entry per file, newest first, by month; "
                   "topics: clusters of what the items show, each labelled with words.")
@click.option("--topic", type=click.IntRange(0), default=None,
              help="With --by topics: the items of this topic (its number in the list).")
@click.option("--order", type=click.Choice(["atypical", "typical"]), default="atypical", show_default=True,
              help="atypical: outliers first (what does not belong); typical: the most usual first.")
@click.option("--kind", type=click.Choice(["image", "video", "frame", "doc", "page", "all"]), default="all",
              show_default=True, help="Which items to browse.")
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(1, 10000), help="Results.")
@click.option("--offset", default=0, type=click.IntRange(0), help="Skip this many results (paging).")
@click.option("--under", type=click.Path(file_okay=False), help="Only items inside this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of hits.")
@verbose_opt
@handle_errors
def browse(db, by, order, kind, k, offset, under, as_json, verbose, topic):
    """Browse the whole collection without a query, by typicality, date or topic.

    \b
    clipsearch browse                       the 20 most atypical items: outliers, strays
    clipsearch browse --kind image -k 50    the 50 most atypical images
    clipsearch browse --order typical       the most typical items first
    clipsearch browse --by date             the 20 newest files, under month headings
    clipsearch browse --by topics           the topics, largest first: number, label, size
    clipsearch browse --by topics --topic 3 the items of topic 3, the most central first

    Typicality is measured in the fitted whitened space (needs `clipsearch fit-transforms`
    to have fitted whitening); the score printed is ||w||^2, higher is more atypical.
    """
    _setup_logging(verbose)
    from clipsearch.collection import Collection

    col = Collection.open(db or _db_default(), device="cpu")
    if topic is not None and by != "topics":
        raise UsageError("--topic needs --by topics", hint="clipsearch browse --by topics --topic 0")
    if by == "date":
        hits = col.browse_by_date(kind=kind, k=k, offset=offset, under=under)
        _echo_by_month(col, hits, as_json)
        return
    if by == "topics":
        if topic is not None:
            _echo_hits(col, col.browse_topic(topic, kind=kind, k=k, offset=offset), as_json)
            return
        _echo_topics(col.browse_topics(kind=kind), as_json)
        return
    hits = col.browse(order=order, kind=kind, k=k, offset=offset, under=under)
    _echo_hits(col, hits, as_json, score_format="9.2f")


def _echo_topics(topics: list, as_json: bool) -> None:
    """Topics: one line each, number, size and label; or one JSON array."""
    if as_json:
        click.echo(jsonsafe.dumps([t.to_dict() for t in topics], ensure_ascii=False))
        return
    if not topics:
        click.echo("no topics (nothing to browse here)")
    for t in topics:
        click.echo(f"{t.id:3d}  {t.size:6d} items  {t.label}")


def _echo_by_month(col, hits: list, as_json: bool) -> None:
    """Date-browsed hits: a heading per month, then one line each: day, kind, file."""
    from clipsearch.browse_date import month_label

    if as_json or not hits:
        _echo_hits(col, hits, as_json)
        return
    month = None
    for h in hits:
        if h.extra["month"] != month:
            month = h.extra["month"]
            click.echo(month_label(month))
        click.echo(f"  {h.extra['date'][:10]}  {h.kind:<11} {h.source}")


def _ts(t: float | None) -> str:
    if t is None:
        return "?"
    m, s = divmod(float(t), 60)
    return f"{int(m)}:{s:04.1f}"


@main.command()
@db_opt
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handle_errors
def info(db, as_json, verbose):
    """What is indexed: model, items, sources, kinds, size on disk."""
    _setup_logging(verbose)
    from clipsearch.collection import Collection
    from clipsearch.watch import describe_state, watch_state

    col = Collection.open(db or _db_default(), device="cpu")
    data = col.info()
    data["watch"] = watch_state(col.path)
    if as_json:
        click.echo(jsonsafe.dumps(data, indent=2))
        return
    click.echo(f"name        {data['name']}")
    click.echo(f"collection  {data['path']}")
    click.echo(f"model       {data['model']}  (dim {data['dim']})")
    be = data["backend"]
    click.echo(f"backend     {be['backend']} {be['precision']}  ({be['note']})")
    if be["vectors_by"]:
        click.echo("  vectors by " + ", ".join(f"{w['backend']} {w['precision']}" for w in be["vectors_by"]))
    click.echo(f"items       {data['items']}  from {data['sources']} files")
    for kd, n in sorted(data["kinds"].items()):
        click.echo(f"  {kd:<13}{n}")
    click.echo(f"roots       {', '.join(data['roots']) or '-'}")
    scan = data["scan"]
    links = "followed only inside the roots"
    if scan["follow_symlinks"]:
        links = "followed anywhere (--follow-symlinks); their targets are roots"
    click.echo(f"symlinks    {links}")
    click.echo(f"hidden      {'included (--include-hidden)' if scan['include_hidden'] else 'skipped'}")
    click.echo(f"excludes    {', '.join(scan['excludes']) or '-'}  (plus .clipsearchignore files)")
    click.echo(f"disk        {data['disk_bytes'] / 1e6:.1f} MB")
    if data.get("cache_dir"):  # a collection on object storage: its derived state is kept here
        click.echo(f"cache       {data['cache_dir']}")
    click.echo(f"ann         {data['ann']['type']} over {data['ann']['rows']} rows")
    click.echo(f"transforms  {data['transforms'] or 'none fitted'}")
    fit = data.get("transforms_fit")
    if fit:
        click.echo(f"  fitted on {fit['sample']} of {fit['rows']} image-like rows: {fit['reason']}")
    table = data["table"]
    click.echo(f"table       version {data['table_version']}: {table['versions']} versions kept, "
               f"{table['fragments']} fragments, {table['deleted_rows']} deleted rows")
    if data.get("last_run"):
        click.echo(f"last run    {data['last_run']}")
    if data["watch"]:
        click.echo(f"watch       {describe_state(data['watch'])}")


@main.command()
@click.option("--all", "show_all", is_flag=True, help="List every open_clip ARCH/TAG, not only presets.")
@click.option("--json", "as_json", is_flag=True)
@with_backend
@verbose_opt
@handle_errors
def models(show_all, as_json, backend, precision, verbose):
    """Known model names, whether their weights are on this machine, and the backend each runs on
    here (read from its export's manifest: `exported and probed on first use` until then)."""
    _setup_logging(verbose)
    from clipsearch.backends import describe
    from clipsearch.hub import weights_status
    from clipsearch.model_registry import PRESETS, resolve

    rows = []
    for p in PRESETS.values():
        status = "needs --checkpoint" if p.needs_checkpoint else weights_status(resolve(p.model))
        run = {"backend": "torch", "precision": "fp32", "note": "needs --checkpoint"} if p.needs_checkpoint \
            else describe(resolve(p.model), backend=backend, precision=precision)
        rows.append({"name": p.name, "model": p.model, "weights": status, "note": p.note,
                     "backend": f"{run['backend']} {run['precision']}", "backend_note": run["note"]})
    if show_all:
        import open_clip  # its list of weights: only --all needs it

        for arch, tag in open_clip.list_pretrained():
            rows.append({"name": f"{arch}/{tag}", "model": f"{arch}/{tag}",
                         "weights": weights_status(resolve(f"{arch}/{tag}")), "note": ""})
    if as_json:
        click.echo(jsonsafe.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<34} {r['weights']:<19} {r.get('backend', ''):<14} {r['note'] or r['model']}")
    if not show_all:
        click.echo("\nAlso: any open_clip ARCH/TAG (--all lists them), hf-hub:ORG/REPO, "
                   "or --model ARCH --checkpoint FILE.")


@main.command("fit-transforms")
@db_opt
@click.option("--text-source", type=click.Choice(["builtin", "collection"]), default="builtin",
              show_default=True, help="Text mean for centering: built-in captions or the collection's text.")
@verbose_opt
@handle_errors
def fit_transforms(db, text_source, verbose):
    """Fit whitening and modality-gap centering on the collection and save them with it.

    Nothing is saved unless some transform could be fitted; a failed fit keeps the old one.
    """
    _setup_logging(verbose)
    from clipsearch.collection import Collection

    col = Collection.open(db or _db_default())
    ts = col.fit_transforms(strict=False, text_source=text_source)  # saves nothing on failure
    click.echo(f"fitted: {ts.describe()}")


@main.command()
@db_opt
@click.option("--transforms", is_flag=True, help="Refit the transforms too (on a bounded sample).")
@verbose_opt
@handle_errors
def optimize(db, transforms, verbose):
    """Compact the table, rebuild the full-text index, retrain the ANN index, and remove table
    versions older than $CLIPSEARCH_KEEP_VERSIONS_MINUTES (default 10: what readers may still
    be reading). Index runs do this when it is worth it; this does it now.
    """
    _setup_logging(verbose)
    from clipsearch.collection import Collection

    col = Collection.open(db or _db_default(), device="cpu")
    click.echo(col.optimize(transforms=transforms).line())


@main.command()
@db_opt
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--auth-file", type=click.Path(dir_okay=False), default=None,
              help="File holding one line user:password to require a login. Default: $CLIPSEARCH_AUTH.")
@click.option("--auth", default=None,
              help="user:password to require a login (visible in the process list: prefer --auth-file).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name the server may be reached by, besides loopback and the bind "
                   "address (repeatable). Other Host headers are refused (DNS rebinding).")
@click.option("--max-pixels", default=None, type=click.IntRange(1),
              help="Largest image (in pixels) the server decodes: uploads, previews, 'more like "
                   "this'. Default 89,478,485.")
@click.option("--watch", "watch", is_flag=True,
              help="Keep the collection current while serving (as `clipsearch watch` over its roots).")
@rescan_opt
@click.option("--ocr", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Read the words in images, scanned pages and video frames. Default: "
                   "$CLIPSEARCH_OCR, else auto (on when the engine, clipsearch[ocr], is installed).")
@click.option("--duplicates-to", "duplicates_to", type=click.Path(file_okay=False), default=None,
              help="Let the UI's Duplicates page move the copies into this folder, after a "
                   "confirmation (never a delete). Default: the page only shows them.")
@click.option("--name", default=None, metavar="NAME",
              help="With --watch: name the collection, as `index --name` does.")
@device_opt
@with_asr
@with_backend
@verbose_opt
@handle_errors
def serve(db, host, port, auth_file, auth, allowed_hosts, max_pixels, watch, rescan_every, ocr, duplicates_to,
          name, device, asr, asr_model, language, backend, precision, verbose):
    """Browser UI and HTTP API over a collection.

    With --watch, new, changed, moved and deleted files under the collection's roots show up
    without a restart; /api/info says what the watcher is doing and when it last ran.
    """
    _setup_logging(verbose)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    MissingDependency.require(("fastapi", "gradio", "uvicorn", "python_multipart"), "clipsearch serve", "ui")
    from clipsearch.ui.server import serve as run_server

    db = db or _db_default()
    if name is not None and not watch:
        raise UsageError("--name names the collection of a server that indexes: give --watch too",
                         hint="or name it with: clipsearch index --name NAME")
    if watch:
        from clipsearch.collection import Collection, checked_name

        if name is not None:
            checked_name(name)
        col = Collection.open(db, device="cpu")
        if not col.roots:
            raise UsageError(f"--watch: the collection at {db} has no indexed folders to watch",
                             hint=f"index one first: clipsearch index FOLDER --db {db}")
        if name is not None:
            col.name = name
    run_server(db, host=host, port=port, auth=auth, device=device, auth_file=auth_file,
               allowed_hosts=allowed_hosts, max_pixels=max_pixels,
               watch=(_watch_options(rescan_every, ocr, asr_options(asr, asr_model, language))
                      if watch else None),
               backend=backend, precision=precision, duplicates_to=duplicates_to)


def _watch_options(rescan_every: float, ocr: str | None, speech: dict[str, Any]) -> dict[str, Any]:
    """`Watcher` keyword arguments of `serve --watch`."""
    add_options: dict[str, Any] = {"ocr": ocr}
    if speech:
        add_options["options"] = speech
    return {"rescan_every": rescan_every, "add_options": add_options}


from clipsearch import cli_duplicates  # noqa: E402,F401  (registers `duplicates`)

if __name__ == "__main__":
    main()
