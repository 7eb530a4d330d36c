"""Metadata filters are prefilters: a filtered search returns exactly the matching items, k of
them when k match, through an IVF shard (the ANN's id selector) and through the exact path."""

from __future__ import annotations

import functools
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from support import tiny_model_args

from clipsearch import ann, search
from clipsearch.errors import UsageError
from clipsearch.records import Record, item_id
from clipsearch.store import SourceRows

N = 700
IVF_FROM = 300  # the test's exact threshold: the image shard is IVF
K = 10
CITIES = [("Lisbon, PT", 38.7223, -9.1393), ("Porto, PT", 41.1496, -8.6110),
          ("Paris, Ile-de-France, FR", 48.8534, 2.3488), ("Tokyo, JP", 35.6895, 139.6917)]
CAMERAS = ["Canon EOS R5", "Apple iPhone 15", "FUJIFILM X-T4", None]
START = datetime(2022, 1, 1, tzinfo=UTC)


def _file_meta(i: int, rng) -> dict:
    city = CITIES[rng.integers(len(CITIES))] if rng.random() < 0.8 else None
    jitter = rng.normal(scale=0.05, size=2)
    w, h = [(640, 480), (4000, 3000), (6000, 4000)][rng.integers(3)]
    return {
        "taken_at": None if rng.random() < 0.05 else START + timedelta(days=int(rng.integers(0, 1000)),
                                                                     seconds=int(rng.integers(86400))),
        "taken_at_source": "exif",
        "camera": "Leica M11" if i in (5, 400, 650) else CAMERAS[rng.integers(len(CAMERAS))],
        "place": city[0] if city else None,
        "gps_lat": city[1] + jitter[0] if city else None, "gps_lon": city[2] + jitter[1] if city else None,
        "width": w, "height": h, "format": ["jpg", "png", "heic"][rng.integers(3)], "bytes": 1000 + i,
    }


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    """(collection, {id: file meta}, {id: stored vector}) over N synthetic photos, ANN saved
    with an IVF image shard."""
    from clipsearch.collection import Collection

    db = tmp_path_factory.mktemp("filters") / "db"
    col = Collection.create(db, device="cpu", **tiny_model_args())
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, col.store.dim))
    truth, items = {}, []
    for i in range(N):
        v = centres[i % 12] + 0.4 * rng.normal(size=col.store.dim)
        rec = Record(kind="image", vector=(v / np.linalg.norm(v)).astype(np.float32))
        raw = f"/lib/p{i:04d}.jpg".encode()
        meta = _file_meta(i, rng)
        truth[item_id(raw, rec.locator())] = meta
        items.append(SourceRows(raw, 1.0, 10, f"h{i}", [rec], file_meta=meta))
    col.store.replace_sources(items)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "update_saved", functools.partial(ann.update_saved, exact_threshold=IVF_FROM))
        saved = col.searcher.rebuild_ann(save=True)
    assert not saved.shards["image"].exact  # an IVF shard
    table, vectors = col.store.vectors()
    stored = dict(zip(table.column("id").to_pylist(), vectors, strict=True))
    return col, truth, stored


def _km(lat, lon, lat0, lon0) -> float:
    la, lo, la0, lo0 = map(math.radians, (lat, lon, lat0, lon0))
    h = math.sin((la - la0) / 2) ** 2 + math.cos(la0) * math.cos(la) * math.sin((lo - lo0) / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def _when(m):
    return m["taken_at"]


CASES = {
    "after": ({"after": "2023"}, lambda m: _when(m) and _when(m) >= datetime(2023, 1, 1, tzinfo=UTC)),
    "before": ({"before": "2022-06"}, lambda m: _when(m) and _when(m) < datetime(2022, 7, 1, tzinfo=UTC)),
    "one month": ({"after": "2022-08", "before": "2022-08"},
                  lambda m: _when(m) and (_when(m).year, _when(m).month) == (2022, 8)),
    "place": ({"place": "LISBON"}, lambda m: m["place"] == "Lisbon, PT"),
    "country": ({"place": "pt", "after": "2023-03-01"},
                lambda m: m["place"] and m["place"].endswith("PT") and _when(m)
                and _when(m) >= datetime(2023, 3, 1, tzinfo=UTC)),
    "near": ({"near": "38.72,-9.14,50"},
             lambda m: m["gps_lat"] is not None and _km(m["gps_lat"], m["gps_lon"], 38.72, -9.14) <= 50),
    "rare camera": ({"camera": "leica"}, lambda m: m["camera"] == "Leica M11"),
    "camera": ({"camera": "iPhone"}, lambda m: m["camera"] == "Apple iPhone 15"),
    "where": ({"where": "width >= 4000 AND format = 'jpg'"},
              lambda m: m["width"] >= 4000 and m["format"] == "jpg"),
    "format and pixels": ({"format": "png", "min_pixels": 20_000_000},
                          lambda m: m["format"] == "png" and m["width"] * m["height"] >= 20_000_000),
    "nothing": ({"after": "2030"}, lambda m: False),
}


def _exact_top(col, truth, stored, keep, k, query="a photo"):
    qv = col.searcher.query_vector(query, None)[0]
    matching = [i for i, m in truth.items() if keep(m)]
    return sorted(matching, key=lambda i: -float(stored[i] @ qv))[:k], len(matching)


@pytest.mark.parametrize("path", ["exact", "ivf"])
@pytest.mark.parametrize("case", list(CASES))
def test_filters_return_exactly_the_matching_items(filtered, monkeypatch, path, case):
    col, truth, stored = filtered
    if path == "ivf":  # every filter through the shard's id selector
        monkeypatch.setattr(search, "FILTER_EXACT_LIMIT", 0)
    kwargs, keep = CASES[case]
    expected, n_match = _exact_top(col, truth, stored, keep, K)
    hits = col.search("a photo", k=K, **kwargs)
    got = [h.id for h in hits]
    assert len(got) == min(K, n_match)  # k hits whenever k match, however rare
    assert all(keep(truth[i]) for i in got)  # nothing that does not match
    if path == "exact" or n_match <= K:
        assert got == expected
    else:
        assert len(set(got) & set(expected)) >= 0.7 * K  # IVF recall among the matching


def test_cases_cover_rare_and_broad_filters(filtered):
    _, truth, _ = filtered
    sizes = {case: sum(bool(keep(m)) for m in truth.values()) for case, (_, keep) in CASES.items()}
    assert 0 < sizes["rare camera"] < K and sizes["nothing"] == 0
    assert sizes["after"] > 300 and sizes["place"] > 50


@pytest.mark.parametrize("order", ["date", "-date"])
def test_sort_by_date_orders_the_best_hits_by_score(filtered, order):
    col, truth, stored = filtered
    keep = CASES["camera"][1]
    top, _ = _exact_top(col, truth, stored, keep, search.DATE_SORT_DEPTH)
    dated = sorted((i for i in top if truth[i]["taken_at"]), key=lambda i: truth[i]["taken_at"],
                   reverse=order == "-date")
    hits = col.search("a photo", k=K, camera="iphone", sort=order)
    assert [h.id for h in hits] == (dated + [i for i in top if not truth[i]["taken_at"]])[:K]
    assert hits[0].to_dict()["taken_at"] == truth[hits[0].id]["taken_at"].isoformat()


def test_paging_through_a_filter_never_repeats_and_stays_inside_it(filtered):
    col, truth, _ = filtered
    first = col.search("a photo", k=K, place="paris")
    second = col.search("a photo", k=K, place="paris", offset=K)
    assert len(second) == K and not {h.id for h in first} & {h.id for h in second}
    assert all(truth[h.id]["place"].startswith("Paris") for h in [*first, *second])


@pytest.mark.parametrize("kwargs, named", [
    ({"where": "nosuch > 1"}, "--where"), ({"where": "width >>> 3"}, "--where"),
    ({"after": "2024-13"}, "--after"), ({"before": "last week"}, "--before"),
    ({"near": "91,0"}, "--near"), ({"near": "a,b"}, "--near"),
    ({"after": "2024", "before": "2023"}, "--after"), ({"sort": "size"}, "sort")])
def test_bad_filters_are_one_line_naming_the_argument(filtered, kwargs, named):
    col, _, _ = filtered
    with pytest.raises(UsageError) as e:
        col.search("a photo", k=K, **kwargs)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_cli_search_filters_as_json(filtered):
    from click.testing import CliRunner

    from clipsearch.cli import main

    col, truth, _ = filtered
    out = CliRunner().invoke(main, ["search", "a photo", "--db", str(col.path), "--camera", "leica",
                                    "--sort", "-date", "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.output)
    assert {h["id"] for h in hits} == {i for i, m in truth.items() if m["camera"] == "Leica M11"}
    assert [h["taken_at"] for h in hits] == sorted((h["taken_at"] for h in hits), reverse=True)
    bad = CliRunner().invoke(main, ["search", "a photo", "--db", str(col.path), "--where", "nosuch = 1"])
    assert bad.exit_code != 0 and "--where" in bad.output


def test_http_search_takes_the_filters(server):
    import httpx

    every = httpx.get(f"{server}/api/search", params={"q": "a shape", "k": 50, "before": "2100",
                                                     "min_relevance": "off"}).json()
    assert every["hits"] and all("taken_at" in h and "bytes" in h for h in every["hits"])
    assert httpx.get(f"{server}/api/search", params={"q": "a shape", "after": "2100"}).json()["hits"] == []
    pdfs = httpx.get(f"{server}/api/search", params={"q": "a shape", "k": 50, "format": "pdf",
                                                    "min_relevance": "off"}).json()
    assert pdfs["hits"] and {h["kind"] for h in pdfs["hits"]} == {"doc_page"}
    newest = httpx.get(f"{server}/api/search", params={"q": "a shape", "k": 20, "sort": "-date",
                                                      "min_relevance": "off"}).json()
    stamps = [h["taken_at"] for h in newest["hits"] if "taken_at" in h]
    assert stamps == sorted(stamps, reverse=True)
    bad = httpx.get(f"{server}/api/search", params={"q": "a shape", "where": "nosuch > 1"})
    assert bad.status_code == 400 and "--where" in bad.json()["error"]


def test_ui_detail_and_status_show_date_place_camera_and_size(sample):
    from clipsearch.ui.api import SearchService
    from clipsearch.ui.app import render_detail

    hit = {"kind": "image", "source": "/p/a.jpg", "score": 0.5, "taken_at": "2024-08-03T13:30:00+00:00",
           "taken_at_source": "exif", "place": "Lisbon, PT", "camera": "Canon EOS R5", "width": 6000,
           "height": 4000, "bytes": 2_500_000}
    html = render_detail(hit)
    for shown in ("2024-08-03 13:30 UTC", "Lisbon, PT", "Canon EOS R5", "6000×4000", "2.5 MB"):
        assert shown in html
    _, db = sample
    line = SearchService(db, device="cpu").status_line()
    assert "taken " in line  # the sample's files have dates (their mtimes)


def test_the_sql_alone_is_exact_for_near(filtered):
    """The full-text legs of document and hybrid search prefilter with `Filters.sql()` alone."""
    from clipsearch.filters import Filters

    col, truth, _ = filtered
    predicate = Filters.parse(near="38.72,-9.14,8").sql()
    got = set(col.store.dataset.to_table(columns=["id"], filter=predicate).column("id").to_pylist())
    expected = {i for i, m in truth.items()
                if m["gps_lat"] is not None and _km(m["gps_lat"], m["gps_lon"], 38.72, -9.14) <= 8}
    assert got == expected and 0 < len(expected) < len(truth)


def test_http_image_upload_takes_the_filters(server, sample):
    """The multipart image search takes the same filters, as form fields."""
    import httpx

    data, _ = sample
    photo = next(p for p in sorted(data.root.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    fmt = "png" if photo.suffix.lower() == ".png" else "jpg"

    def upload(**fields):
        with photo.open("rb") as f:
            r = httpx.post(f"{server}/api/search/image", files={"file": (photo.name, f)},
                           data={"k": "20", "min_relevance": "off", **fields})
        assert r.status_code == 200, r.text
        return r.json()["hits"]

    assert upload()[0]["source"] == str(photo)  # control: the photo finds itself
    same = upload(format=fmt)
    assert same and all(h["format"] == fmt for h in same)
    assert upload(after="2100") == []
    pdfs = upload(format="pdf")
    assert pdfs and {h["kind"] for h in pdfs} == {"doc_page"}
