"""Query operators (#19): the inline form's parser, and known answers on the sample collection
through the Python API, the CLI and a real HTTP server (README, "Query operators")."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch import query_terms
from clipsearch.errors import UsageError
from clipsearch.query_terms import QueryTerm, as_terms, combine, format_query, parse_query

ID = "0123456789abcdef0123456789abcdef"


# ---- the parser ----------------------------------------------------------------------------
def kinds_values_weights(terms: list[QueryTerm]) -> list[tuple[str, str, float]]:
    return [(t.kind, str(t.value), t.weight) for t in terms]


def test_plain_words_are_one_text_term_whatever_they_hold():
    for q in ("a red star", "t-shirt", "x+y", "-5 degrees", "10:30 meeting", "AC/DC", "nan:foo",
              "rock -paper", "c++ code"):
        assert kinds_values_weights(parse_query(q)) == [("text", q, 1.0)], q


def test_separators_weights_signs_and_quotes():
    assert kinds_values_weights(parse_query("2:golden retriever + a pool - indoors")) == [
        ("text", "golden retriever", 2.0), ("text", "a pool", 1.0), ("text", "indoors", -1.0)]
    assert kinds_values_weights(parse_query("- indoors + 0.5: a dog")) == [
        ("text", "indoors", -1.0), ("text", "a dog", 0.5)]
    assert kinds_values_weights(parse_query('"rock - paper" - 3:"scissors + glue"')) == [
        ("text", "rock - paper", 1.0), ("text", "scissors + glue", -3.0)]
    # quotes make words: a quoted path or id is text
    assert kinds_values_weights(parse_query('"./pool.jpg" + "id:' + ID + '"')) == [
        ("text", "./pool.jpg", 1.0), ("text", "id:" + ID, 1.0)]
    assert kinds_values_weights(parse_query(f"a cat - id:{ID}")) == [
        ("text", "a cat", 1.0), ("item", ID, -1.0)]


def test_image_terms_are_files_and_a_missing_path_is_an_error_naming_it(tmp_path, monkeypatch):
    pic = tmp_path / "pool.jpg"
    Image.new("RGB", (8, 8)).save(pic)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "pic", "PNG")
    monkeypatch.chdir(tmp_path)
    terms = parse_query(f"a dog + ./pool.jpg - {pic} + pool.jpg + sub/pic")
    assert [t.kind for t in terms] == ["text", "image", "image", "image", "image"]
    assert [t.weight for t in terms] == [1.0, 1.0, -1.0, 1.0, 1.0]
    for q, term in (("a dog + ./nope.jpg", "./nope.jpg"), ("nope.png - a cat", "nope.png"),
                    ("a + ~/no/such/file", "~/no/such/file"), ("a + ./sub", "./sub")):
        with pytest.raises(UsageError) as e:
            parse_query(q)
        assert repr(term) in str(e.value), q
    # a "/" inside words is an image only when that file exists
    assert parse_query("sub/nothing")[0].kind == "text"


def test_a_server_never_opens_a_path(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("secret")
    monkeypatch.chdir(tmp_path)
    for q in ("/etc/passwd", "a + ./x.jpg", "x.jpg", "~/.ssh/id_rsa", "../x.png"):
        with pytest.raises(UsageError, match="does not open files by path"):
            parse_query(q, paths=False)
    # words with a slash stay words on a server, whether or not such a file exists there
    assert parse_query("etc/passwd", paths=False)[0].kind == "text"


@pytest.mark.parametrize(("query", "words"), [
    ("", "is empty"), ("   ", "is empty"), ("a -", "empty term after '-'"),
    ("a + + b", "empty term after '+'"),
    ("- - a", "empty term"), ('""', "empty term"), ("2:", "empty term after its weight"),
    ('a "b', "unclosed quote"), ("0:a dog", "bad weight '0'"), ("-2:a dog", "bad weight '-2'"),
    ("1e9:a dog", "bad weight"), ("101:a dog", "bad weight"), ("1.2.3:a dog", "bad weight"),
    ("id:xyz", "not an item id"),
])
def test_bad_terms_are_usage_errors_saying_what_is_wrong(query, words):
    with pytest.raises(UsageError) as e:
        parse_query(query)
    assert words in str(e.value)
    assert e.value.hint


def test_the_inline_form_reads_back_as_the_same_terms(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "p.jpg")
    monkeypatch.chdir(tmp_path)
    for q in ("a red star", "2:golden retriever + ./p.jpg - indoors", '"rock - paper" - scissors',
              f"- a cat + id:{ID}", '"10: x" + 1.5:"AC/DC"'):
        terms = parse_query(q)
        assert kinds_values_weights(parse_query(format_query(terms))) == kinds_values_weights(terms), q


def test_the_typed_python_form(tmp_path):
    pic = Image.new("RGB", (8, 8))
    terms = as_terms([("a dog", 2), (tmp_path / "p.jpg", -1.0), pic, query_terms.item(ID, 0.5), "indoors"])
    assert [(t.kind, t.weight) for t in terms] == [("text", 2.0), ("image", -1.0), ("image", 1.0),
                                                   ("item", 0.5), ("text", 1.0)]
    assert as_terms("a + b")[1].value == "b"  # one str: the inline form
    for bad in ([("a dog", 0)], [("a dog", math.nan)], [("a dog", "x")], [("a dog", 1e6)]):
        with pytest.raises(UsageError, match="'a dog': bad weight"):
            as_terms(bad)
    with pytest.raises(UsageError, match="empty"):
        as_terms([" "])
    with pytest.raises(UsageError, match="not text, an image or an item"):
        as_terms([(42, 1.0)])
    with pytest.raises(UsageError, match="'./pool.jpg' looks like a path"):
        as_terms([("./pool.jpg", 1.0)])
    assert as_terms([query_terms.text("pool.jpg")])[0].kind == "text"


def test_combine_is_the_renormalised_weighted_sum_of_unit_vectors():
    a, b = np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 1.0, 0.0], np.float32)
    assert np.array_equal(combine([a], [1.0]), a)
    v = combine([a, b], [2.0, -1.0])
    assert np.allclose(v, np.array([2, -1, 0]) / math.sqrt(5)) and v.dtype == np.float32
    with pytest.raises(UsageError, match="cancel out"):
        combine([a, a], [1.0, -1.0])
    with pytest.raises(UsageError, match="only negative terms"):
        query_terms.check_positive(parse_query("- a - b"))


# ---- known answers on the sample collection ----------------------------------------------------
def names(hits) -> list[str]:
    return [os.path.basename(h.source) for h in hits]


def red_stars(hits) -> int:
    return sum(n.startswith("red_star") for n in names(hits))


def test_a_negative_term_removes_its_concept_from_the_top_10(sample_collection):
    col, _, _ = sample_collection
    plain = col.search("a red shape", k=10, kind="image")
    assert red_stars(plain) == 3  # the three red stars are there without the operator
    for q in ("a red shape - star", [("a red shape", 1.0), ("star", -1.0)]):
        hits = col.search(terms=q, k=10, kind="image")
        assert red_stars(hits) == 0, names(hits)
        assert all(n.startswith("red_square") for n in names(hits)[:3]), names(hits)
    # over all kinds too (document text fusion takes the positive words only)
    assert red_stars(col.search(terms="a red shape - star", k=10)) == 0


def test_weights_shift_the_ranking_the_way_they_say(sample_collection):
    col, _, _ = sample_collection

    def ranks(q: str) -> tuple[float, float]:
        """Mean rank (of 36 images) of the red squares, and of the white stars."""
        top = names(col.search(terms=q, k=36, kind="image"))
        return (float(np.mean([i for i, n in enumerate(top) if n.startswith("red_square")])),
                float(np.mean([i for i, n in enumerate(top) if n.startswith("white_star")])))
    red_heavy, even, star_heavy = (ranks("a star + 3:a red shape"), ranks("a star + a red shape"),
                                   ranks("3:a star + a red shape"))
    assert red_heavy[0] < even[0] < star_heavy[0], (red_heavy, even, star_heavy)  # red squares rise
    assert star_heavy[1] < even[1] < red_heavy[1], (red_heavy, even, star_heavy)  # white stars rise


def test_single_term_and_text_plus_image_queries_rank_as_before(sample_collection):
    col, manifest, _ = sample_collection
    picture = Path(manifest["images"][0]["file"])
    enc = col.encoder
    old = enc.encode_texts(["a red star"])[0]
    vec, modality = col.searcher.query_vector("a red star", None)
    assert np.array_equal(vec, (old / max(np.linalg.norm(old), 1e-12)).astype(np.float32))
    assert modality == "text"
    for kw, terms in (({"text": "a red star"}, "a red star"),
                      ({"image": picture}, [picture]),
                      ({"text": "a blue circle", "image": picture},
                       [("a blue circle", 1.0), (picture, 1.0)])):
        before = col.search(k=10, **kw)
        after = col.search(terms=terms, k=10)
        assert [(h.id, h.score) for h in before] == [(h.id, h.score) for h in after], kw
    assert col.searcher.query_vector("a blue circle", picture)[1] == "mixed"


def test_item_terms_use_the_stored_vector(sample_collection):
    col, _, _ = sample_collection
    target = col.search("a blue circle", k=1, kind="image")[0]
    hits = col.search(terms=[query_terms.item(target.id)], k=3, kind="image")
    assert hits[0].id == target.id and hits[0].score > 0.99
    assert col.search(terms=f"id:{target.id}", k=1, kind="image")[0].id == target.id
    with pytest.raises(UsageError, match=f"'id:{ID}': no such item"):
        col.search(terms=f"a cat - id:{ID}", k=3)


def test_several_terms_with_centering_and_errors_of_the_rankers(sample_collection):
    col, _, _ = sample_collection
    hits = col.search(terms="a red shape - star", k=10, kind="image", center=True)
    assert red_stars(hits) == 0, names(hits)
    with pytest.raises(UsageError, match="moment search takes one text query"):
        col.search(terms="a red star - circle", kind="moment")
    with pytest.raises(UsageError, match="only negative terms"):
        col.search(terms=[("a star", -1.0)])
    with pytest.raises(UsageError, match="no such file"):
        col.search(terms=[("a star", 1.0), (Path("/no/such.jpg"), 1.0)])


# ---- the CLI -----------------------------------------------------------------------------------
def cli(db: Path, *args: str):
    from clipsearch.cli import main

    return CliRunner().invoke(main, ["search", "--db", str(db), "--device", "cpu", *args])


def test_cli_operators_and_usage_errors(sample_collection, tmp_path):
    _, manifest, db = sample_collection
    r = cli(db, "a red shape", "--not", "star", "--kind", "image", "-k", "10")
    assert r.exit_code == 0, r.output
    assert "red_square" in r.output and "red_star" not in r.output
    r = cli(db, "a red shape - star", "--kind", "image", "-k", "10")
    assert r.exit_code == 0 and "red_star" not in r.output
    picture = manifest["images"][0]["file"]
    r = cli(db, "a shape", "--image", picture, "--not-image", picture, "--not", "blue", "-k", "3")
    assert r.exit_code == 0, r.output  # the picture cancels itself out: "a shape - blue" is left
    for args, words in ((["a red shape + ./no_such.jpg"], "'./no_such.jpg'"),
                        (["a red shape", "--image", str(tmp_path / "gone.jpg")], "gone.jpg"),
                        (["a red shape -"], "empty term"), (["0:a red shape"], "'0:a red shape': bad weight"),
                        (["a red shape", "--not", ""], "--not is empty"),
                        (["a star - circle", "--moments"], "one text query")):
        r = cli(db, *args)
        assert r.exit_code == 2, (args, r.output)
        assert words in r.output and "hint:" in r.output, (args, r.output)


# ---- HTTP, through a real server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def http(sample_collection):
    httpx = pytest.importorskip("httpx")
    from clipsearch.ui.server import build_app
    from support import ServerThread

    _, _, db = sample_collection
    with ServerThread(build_app(db, device="cpu")) as srv:
        yield httpx, srv.url


def test_http_operators_in_q_and_not(http):
    httpx, url = http
    for params in ([("q", "a red shape - star")], [("q", "a red shape"), ("not", "star")],
                   [("q", "a red shape"), ("not", "star"), ("not", "blue")]):
        r = httpx.get(url + "/api/search", params=[*params, ("kind", "image"), ("k", "10")], timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert not [h for h in body["hits"] if h["name"].startswith("red_star")], body["hits"]
        assert body["terms"][0] == {"kind": "text", "label": "a red shape", "weight": 1.0, "from": "q"}
        assert {"kind": "text", "label": "star", "weight": -1.0,
                "from": body["terms"][1]["from"]} in body["terms"]
    target = body["hits"][0]
    r = httpx.get(url + "/api/search", params={"q": f"id:{target['id']}", "kind": "image", "k": 2},
                  timeout=60)
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == target["id"]


@pytest.mark.parametrize(("params", "words"), [
    ({"q": "/etc/passwd"}, "'/etc/passwd': this server does not open files by path"),
    ({"q": "a cat + ../../secret.jpg"}, "does not open files by path"),
    ({"q": "a cat", "not": "~/.ssh/id_rsa"}, "does not open files by path"),
    ({"q": "0:a cat"}, "'0:a cat': bad weight"),
    ({"q": "a cat -"}, "empty term"),
    ({"q": "a cat", "not": "a -"}, "empty term"),
    ({"q": f"a cat - id:{ID}"}, f"'id:{ID}': no such item"),
    ({"q": "- a cat"}, "only negative terms"),
    ({"q": "a cat - dog", "kind": "moment"}, "one text query"),
])
def test_http_bad_terms_answer_400_naming_them(http, params, words):
    httpx, url = http
    r = httpx.get(url + "/api/search", params=params, timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"] and r.json()["hint"]


def test_http_image_upload_takes_terms_too(http, sample_collection):
    httpx, url = http
    _, manifest, _ = sample_collection
    picture = next(r["file"] for r in manifest["images"] if "red_star" in r["file"])
    with open(picture, "rb") as f:
        data = f.read()
    r = httpx.post(url + "/api/search/image", files={"file": ("q.jpg", data, "image/jpeg")},
                   data={"k": "5", "kind": "image", "q": "a shape", "not": ["blue", "green"]}, timeout=120)
    assert r.status_code == 200, r.text
    terms = r.json()["terms"]
    assert [(t["kind"], t["from"], t["weight"]) for t in terms] == [
        ("text", "q", 1.0), ("image", "image", 1.0), ("text", "not", -1.0), ("text", "not", -1.0)]
    r = httpx.post(url + "/api/search/image", files={"file": ("q.jpg", data, "image/jpeg")},
                   data={"q": "a + ./x.jpg"}, timeout=60)
    assert r.status_code == 400 and "does not open files by path" in r.json()["error"]


# ---- the UI's chips ----------------------------------------------------------------------------
def test_ui_chips_show_every_part_of_a_query_with_an_image():
    pytest.importorskip("gradio")
    from clipsearch.ui.app import render_chips, without_term

    assert render_chips([{"kind": "text", "label": "a dog", "weight": 1.0, "from": "q"}]) == ""
    html = render_chips([{"kind": "text", "label": "a dog", "weight": 1.0, "from": "q"},
                         {"kind": "image", "label": "image", "weight": 1.0, "from": "image"},
                         {"kind": "text", "label": "<b>in</b>", "weight": -2.0, "from": "not"}])
    assert html.count("data-action='drop'") == 3
    assert "image: image" in html and "not 2× &lt;b&gt;in&lt;/b&gt;" in html and "<b>" not in html
    assert without_term("2:a dog + a cat - indoors", 1) == "2:a dog - indoors"
    assert without_term("a dog", 0) == ""


def queue_call(c, config: dict, elem_id: str, event: str, data: list, event_data: dict | None = None,
               session: str = "chips") -> list:
    """Run the UI's handler of `event` on the component `elem_id` through Gradio's queue, as the
    browser does (one `session`: its gr.State lives on the server); returns its outputs."""
    import json

    comp = next(x["id"] for x in config["components"] if x.get("props", {}).get("elem_id") == elem_id)
    dep = next(d for d in config["dependencies"] if [comp, event] in d["targets"])
    r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": dep["id"], "trigger_id": comp,
                                               "session_hash": session, "event_data": event_data})
    assert r.status_code == 200, r.text
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    assert msg.get("success"), msg
                    return msg["output"]["data"]
    raise AssertionError("no answer from the queue")


def ui_inputs(text: str, image: dict | None, negative: str) -> list:
    """The search box's inputs: text, image, kind, folder, whiten, center, invert, taken from,
    until, place, camera, sort, and the not box."""
    return [text, image, "All", "", False, False, False, "", "", "", "", "Best match", negative]


def test_ui_text_plus_image_shows_both_parts_as_chips_and_a_chip_removes_its_part(http, sample_collection):
    httpx, url = http
    _, manifest, _ = sample_collection
    picture = Path(next(r["file"] for r in manifest["images"] if "red_star" in r["file"]))
    with httpx.Client(base_url=url, timeout=120) as c:
        config = c.get("/config").json()
        upload = {"files": (picture.name, picture.read_bytes(), "image/jpeg")}
        path = c.post("/gradio_api/upload", files=upload).json()[0]
        image = {"path": path, "orig_name": picture.name, "size": picture.stat().st_size,
                 "mime_type": "image/jpeg", "meta": {"_type": "gradio.FileData"}}
        out = queue_call(c, config, "cs-query", "submit", ui_inputs("a blue circle", image, "indoors"))
        chips = out[6]
        assert chips.count("data-action='drop'") == 3, chips
        assert "a blue circle" in chips and "image: image" in chips and "not indoors" in chips
        # the image chip's ×: the image leaves its box (the query then runs again without it)
        dropped = queue_call(c, config, "cs-chips", "click", [None, "a blue circle", "indoors"],
                             {"action": "drop", "index": 1})
        assert dropped[1] is None, dropped
        out = queue_call(c, config, "cs-query", "submit", ui_inputs("a blue circle", None, "indoors"))
        assert "image:" not in out[6] and out[6].count("data-action='drop'") == 2, out[6]
        dropped = queue_call(c, config, "cs-chips", "click", [None, "a blue circle", "indoors"],
                             {"action": "drop", "index": 1})
        assert dropped[2] == "", dropped  # the not box's only term is gone
        out = queue_call(c, config, "cs-query", "submit", ui_inputs("a blue circle", None, ""))
        assert out[6] == ""  # plain text: no chips
