"""When, where and with what a file was made (`clipsearch.metadata`): read from the header of
real files written here, stored on every row, migrated into older tables without embedding."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import lance
import numpy as np
import piexif
import pyarrow as pa
import pytest
from PIL import Image
from support import solid, tiny_model_args

from clipsearch import metadata
from clipsearch.store import FILE_COLUMNS, META_COLUMNS, SCHEMA_VERSION, TABLE_META_KEY

LISBON = (38.7223, -9.1393)


def _dms(value: float) -> tuple[tuple[int, int], ...]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = round(((value - d) * 60 - m) * 60 * 100)
    return (d, 1), (m, 1), (s, 100)


def write_jpeg(path: Path, *, date: bytes | None = None, offset: bytes | None = None,
               make: bytes | None = None, model: bytes | None = None, lens: bytes | None = None,
               gps: tuple[float, float] | None = None, raw_gps: dict | None = None,
               size=(64, 48), colour=(200, 40, 40), orientation: int | None = None) -> Path:
    zeroth, exif, gps_ifd = {}, {}, {}
    if make:
        zeroth[piexif.ImageIFD.Make] = make
    if model:
        zeroth[piexif.ImageIFD.Model] = model
    if orientation:
        zeroth[piexif.ImageIFD.Orientation] = orientation
    if date:
        exif[piexif.ExifIFD.DateTimeOriginal] = date
    if offset:
        exif[piexif.ExifIFD.OffsetTimeOriginal] = offset
    if lens:
        exif[piexif.ExifIFD.LensModel] = lens
    if gps:
        lat, lon = gps
        gps_ifd = {piexif.GPSIFD.GPSLatitudeRef: b"N" if lat >= 0 else b"S",
                   piexif.GPSIFD.GPSLatitude: _dms(lat),
                   piexif.GPSIFD.GPSLongitudeRef: b"E" if lon >= 0 else b"W",
                   piexif.GPSIFD.GPSLongitude: _dms(lon)}
    if raw_gps:
        gps_ifd = raw_gps
    im = Image.fromarray(solid(colour, size))
    im.save(path, exif=piexif.dump({"0th": zeroth, "Exif": exif, "GPS": gps_ifd}), quality=90)
    return path


def write_video(path: Path, creation_time: str) -> Path:
    import av

    with av.open(str(path), "w") as c:
        c.metadata["creation_time"] = creation_time
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            for p in s.encode(av.VideoFrame.from_ndarray(solid((i * 12, 80, 160)), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_pdf(path: Path, creation: str) -> Path:
    """A one-page PDF with an Info dictionary (pdfium rebuilds the missing xref)."""
    path.write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[3 0 R 5 0 R]/Count 2>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 300 300]>>endobj\n"
        b"5 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 300 300]>>endobj\n"
        + f"4 0 obj<</CreationDate({creation})/Title(t)>>endobj\n".encode()
        + b"trailer<</Root 1 0 R/Info 4 0 R>>\n%%EOF\n")
    return path


# ---- the reader ---------------------------------------------------------------------------------
def test_jpeg_exif_date_offset_camera_lens_gps_and_place(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", date=b"2024:08:03 14:30:00", offset=b"+01:00", make=b"Canon",
                   model=b"Canon EOS R5", lens=b"RF24-70mm F2.8 L IS USM", gps=LISBON, size=(80, 40))
    m = metadata.read(p)
    assert m["taken_at"] == datetime(2024, 8, 3, 13, 30, tzinfo=UTC)  # 14:30 at +01:00
    assert m["taken_at_source"] == "exif"
    assert (m["width"], m["height"]) == (80, 40)
    assert m["camera"] == "Canon EOS R5"  # the make is not repeated
    assert m["lens"] == "RF24-70mm F2.8 L IS USM"
    assert m["gps_lat"] == pytest.approx(LISBON[0], abs=1e-4)
    assert m["gps_lon"] == pytest.approx(LISBON[1], abs=1e-4)
    assert "Lisbon" in m["place"] and m["place"].endswith("PT")
    assert m["format"] == "jpg" and m["bytes"] == p.stat().st_size
    assert m["duration"] is None and m["pages"] is None


def test_make_joins_a_model_that_does_not_name_it_and_orientation_turns_the_size(tmp_path):
    p = write_jpeg(tmp_path / "b.jpg", make=b"Apple", model=b"iPhone 15 Pro", size=(80, 40), orientation=6)
    m = metadata.read(p)
    assert m["camera"] == "Apple iPhone 15 Pro"
    assert (m["width"], m["height"]) == (40, 80)  # stored sideways, shown upright
    assert m["taken_at_source"] == "mtime"
    assert m["taken_at"] == datetime.fromtimestamp(p.stat().st_mtime, UTC)


def test_video_creation_time(tmp_path):
    m = metadata.read(write_video(tmp_path / "v.mp4", "2023-05-01T10:00:00.000000Z"))
    assert m["taken_at"] == datetime(2023, 5, 1, 10, 0, tzinfo=UTC)
    assert m["taken_at_source"] == "video"
    assert (m["width"], m["height"]) == (64, 48)
    assert m["duration"] == pytest.approx(2.0, abs=0.15)
    assert m["format"] == "mp4"


def test_pdf_creation_date_and_pages(tmp_path):
    m = metadata.read(write_pdf(tmp_path / "d.pdf", "D:20210315093000+02'00'"))
    assert m["taken_at"] == datetime(2021, 3, 15, 7, 30, tzinfo=UTC)
    assert m["taken_at_source"] == "pdf"
    assert m["pages"] == 2 and m["format"] == "pdf"


@pytest.mark.parametrize("date, offset", [
    (b"0000:00:00 00:00:00", None), (b"9999:12:31 23:59:59", None), (b"2024:13:45 99:99:99", None),
    (b"\xff\xfe garbage", None), (b"", None)])
def test_implausible_exif_dates_are_unknown_and_mtime_says_so(tmp_path, date, offset):
    p = write_jpeg(tmp_path / "bad.jpg", date=date or b" ", offset=offset)
    m = metadata.read(p)
    assert m["taken_at_source"] == "mtime"
    assert m["taken_at"] == datetime.fromtimestamp(p.stat().st_mtime, UTC)


def test_an_offset_out_of_range_is_unknown_the_local_time_kept(tmp_path):
    m = metadata.read(write_jpeg(tmp_path / "o.jpg", date=b"2024:08:03 14:30:00", offset=b"+99:00"))
    assert m["taken_at"] == datetime(2024, 8, 3, 14, 30, tzinfo=UTC)  # no offset: taken as UTC
    assert m["taken_at_source"] == "exif"


@pytest.mark.parametrize("gps", [
    {1: b"N", 2: ((200, 1), (0, 1), (0, 1)), 3: b"E", 4: ((10, 1), (0, 1), (0, 1))},  # latitude 200
    {1: b"N", 2: ((10, 1), (0, 1), (0, 1)), 3: b"E", 4: ((190, 1), (0, 1), (0, 1))},  # longitude 190
    {1: b"N", 2: ((10, 0), (0, 0), (0, 0)), 3: b"E", 4: ((10, 1), (70, 1), (0, 1))},  # /0, 70 minutes
    {2: ((0, 1), (0, 1), (0, 1)), 4: ((0, 1), (0, 1), (0, 1))},  # 0,0: an unset receiver
])
def test_gps_out_of_range_is_unknown(tmp_path, gps):
    m = metadata.read(write_jpeg(tmp_path / "g.jpg", raw_gps=gps))
    assert m["gps_lat"] is None and m["gps_lon"] is None and m["place"] is None


def test_garbage_exif_block_never_raises(tmp_path):
    p = tmp_path / "junk.jpg"
    Image.fromarray(solid((10, 200, 10))).save(p, exif=b"Exif\x00\x00" + os.urandom(300))
    m = metadata.read(p)
    assert (m["width"], m["height"]) == (64, 48)
    assert m["taken_at_source"] == "mtime" and m["camera"] is None
    assert metadata.read(tmp_path / "missing.jpg")["bytes"] is None  # gone: all unknown


# ---- indexing -------------------------------------------------------------------------------------
def _columns_by_name(col) -> dict[str, dict]:
    rows = col.store.scan(["source", "kind", *FILE_COLUMNS]).to_pylist()
    return {Path(r["source"]).name: r for r in rows if r["kind"] in ("image", "video", "doc_page")}


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "lib"
    root.mkdir()
    write_jpeg(root / "lisbon.jpg", date=b"2024:08:03 14:30:00", offset=b"+01:00", make=b"Canon",
               model=b"Canon EOS R5", gps=LISBON)
    write_jpeg(root / "year0.jpg", date=b"0000:00:00 00:00:00", offset=b"+99:00",
               raw_gps={1: b"N", 2: ((200, 1), (0, 1), (0, 1)), 3: b"E", 4: ((10, 1), (0, 1), (0, 1))},
               colour=(30, 30, 220))
    Image.fromarray(solid((10, 200, 10))).save(root / "junk.jpg", exif=b"Exif\x00\x00" + os.urandom(300))
    write_video(root / "clip.mp4", "2023-05-01T10:00:00.000000Z")
    write_pdf(root / "doc.pdf", "D:20210315093000+02'00'")
    return root


def test_index_stores_each_files_columns_on_its_rows(tmp_path, library):
    from clipsearch.collection import Collection

    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    report = col.add([library], workers=1)
    assert not report.skipped, report.skipped  # bad metadata never skips a file
    rows = _columns_by_name(col)
    assert rows["lisbon.jpg"]["taken_at"] == datetime(2024, 8, 3, 13, 30, tzinfo=UTC)
    assert rows["lisbon.jpg"]["camera"] == "Canon EOS R5" and "Lisbon" in rows["lisbon.jpg"]["place"]
    assert rows["year0.jpg"]["taken_at_source"] == "mtime" and rows["year0.jpg"]["gps_lat"] is None
    assert rows["junk.jpg"]["taken_at_source"] == "mtime" and rows["junk.jpg"]["width"] == 64
    assert rows["clip.mp4"]["taken_at_source"] == "video" and rows["clip.mp4"]["duration"] > 1.5
    assert rows["doc.pdf"]["taken_at_source"] == "pdf" and rows["doc.pdf"]["pages"] == 2
    frames = col.store.scan(["taken_at_source"], "kind = 'video_frame'").column("taken_at_source")
    assert frames.to_pylist() and set(frames.to_pylist()) == {"video"}  # every row of the file
    info = col.info()["taken"]
    assert info["first"].startswith("2021-03-15") and info["places"][0][0].startswith("Lisbon")
    assert info["cameras"] == [["Canon EOS R5", 1]]
    hit = col.search("a red picture", k=10, place="lisbon")[0]
    assert hit.to_dict()["camera"] == "Canon EOS R5" and hit.to_dict()["taken_at"].startswith("2024-08-03")


def _downgrade_to_version_1(col) -> None:
    """Rewrite the table as the release before file columns wrote it: the same rows in the old
    schema (no file columns, no schema version), through lance/pyarrow."""
    uri = col.store.uri
    ds = lance.dataset(uri)
    old = ds.to_table(columns=[*META_COLUMNS, "vector"])
    fields = [ds.schema.field(c) for c in [*META_COLUMNS, "vector"]]
    schema = pa.schema(fields, metadata={TABLE_META_KEY: ds.schema.metadata[TABLE_META_KEY]})
    lance.write_dataset(old.cast(schema), uri, mode="overwrite", schema=schema)


def test_an_older_collection_is_migrated_and_filled_without_the_encoder(tmp_path, library, monkeypatch):
    from clipsearch.collection import Collection

    db = tmp_path / "db"
    col = Collection.create(db, device="cpu", **tiny_model_args())
    col.add([library], workers=1)
    ids_before = sorted(col.store.scan(["id"]).column("id").to_pylist())
    vectors_before = col.store.vectors()[1]
    _downgrade_to_version_1(col)

    old = Collection.open(db, device="cpu")
    assert old.store.file_columns() == [] and old.store.schema_version() == 1
    assert old.info()["taken"] is None  # readers of an unmigrated table still work

    def no_encoder(self):
        raise AssertionError("the encoder was loaded to fill metadata")

    monkeypatch.setattr(Collection, "encoder", property(no_encoder))
    again = Collection.open(db, device="cpu")
    report = again.add(workers=1)
    assert report.indexed == 0 and report.described == 5
    assert again.store.schema_version() == SCHEMA_VERSION
    assert sorted(again.store.scan(["id"]).column("id").to_pylist()) == ids_before
    assert np.array_equal(np.sort(again.store.vectors()[1], axis=0), np.sort(vectors_before, axis=0))
    rows = _columns_by_name(again)
    assert rows["lisbon.jpg"]["camera"] == "Canon EOS R5"
    assert rows["clip.mp4"]["taken_at"] == datetime(2023, 5, 1, 10, 0, tzinfo=UTC)
    assert rows["doc.pdf"]["pages"] == 2
    assert again.store.sources_without_file_meta() == []
    assert again.add(workers=1).described == 0  # filled once
