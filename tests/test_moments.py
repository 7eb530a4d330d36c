"""Moment retrieval without a model: hand-computed metrics, pure curves, planted vectors in LanceDB."""

from __future__ import annotations

import numpy as np
import pytest
from clipsearch.indexers.video import build_records

from clipsearch.moments import (
    Moment,
    VideoCatalog,
    WindowCatalog,
    find_moments,
    merge_hits,
    nms,
    rank_videos,
    segments_from_curve,
    smooth_curve,
    standardise_per_scale,
)
from clipsearch.records import path_bytes
from clipsearch.store import SourceRows, Store
from clipsearch.video_metrics import Span, mean_iou, recall_at_iou, span_iou, temporal_iou, video_recall_at_k

DIM = 64

# ---------------------------------------------------------------- metrics, by hand


def test_temporal_iou_hand_cases():
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 2), (3, 4)) == 0.0
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert temporal_iou((10, 0), (5, 15)) == pytest.approx(5 / 15)  # order of ends does not matter
    assert temporal_iou((3, 3), (3, 3)) == 0.0


def test_recall_and_miou_hand_cases():
    gts = [Span("a", 0, 10), Span("b", 20, 30), Span("c", 0, 4)]
    preds = [
        [Span("a", 0, 8)],  # IoU 0.8
        [Span("a", 20, 30), Span("b", 22, 30)],  # wrong video first (0), then IoU 0.8
        [],  # nothing found
    ]
    assert span_iou(preds[1][0], gts[1]) == 0.0
    assert recall_at_iou(preds, gts, 0.5) == pytest.approx(1 / 3)
    assert recall_at_iou(preds, gts, 0.5, k=2) == pytest.approx(2 / 3)
    assert recall_at_iou(preds, gts, 0.9) == 0.0
    assert mean_iou(preds, gts) == pytest.approx(0.8 / 3)
    assert video_recall_at_k([["a", "b"], ["a", "b"], []], ["a", "b", "c"], k=1) == pytest.approx(1 / 3)
    assert video_recall_at_k([["a", "b"], ["a", "b"], []], ["a", "b", "c"], k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        mean_iou(preds[:1], gts)


# ---------------------------------------------------------------- pure curve → segments


def box_curve(lo=0.0, hi=60.0, dt=0.5, spans=((20.0, 30.0),), bg=0.2, fg=0.8):
    t = np.arange(lo, hi, dt)
    s = np.full_like(t, bg)
    for a, b in spans:
        s[(t >= a) & (t < b)] = fg
    return t, s


def test_box_is_recovered_exactly_with_cuts_and_closely_without():
    t, s = box_curve()
    seg = segments_from_curve(t, s, cuts=[20.0, 30.0])[0]
    assert (seg.t_start, seg.t_end) == (20.0, 30.0)
    seg = segments_from_curve(t, s)[0]
    assert temporal_iou((seg.t_start, seg.t_end), (20, 30)) >= 0.9
    assert 24.0 <= seg.peak < 30.0


def test_gaps_are_bridged_up_to_two_seconds():
    t, s = box_curve(spans=((20, 25), (26, 30)))  # 1 s dip
    seg = segments_from_curve(t, s, sigma=0.3)[0]
    assert temporal_iou((seg.t_start, seg.t_end), (20, 30)) >= 0.9
    t, s = box_curve(spans=((10, 20), (30, 40)))  # 10 s dip: two moments
    segs = segments_from_curve(t, s, sigma=0.3)
    found = sorted((round(g.t_start), round(g.t_end)) for g in segs[:2])
    assert found == [(10, 20), (30, 40)]


def test_short_spike_gets_minimum_length_and_uneven_sampling_is_fine():
    t, s = box_curve(spans=((30.0, 30.5),))
    seg = segments_from_curve(t, s, sigma=0.3)[0]
    assert seg.t_end - seg.t_start == pytest.approx(2.0) and seg.t_start <= 30.0 <= seg.t_end
    # extra samples at cuts make the grid uneven; smoothing must not shift the box
    t2 = np.sort(np.concatenate([t, [19.9, 30.1]]))
    s2 = np.where((t2 >= 20) & (t2 < 30), 0.8, 0.2)
    sm = smooth_curve(t2, s2, 1.0)
    assert abs(sm[np.searchsorted(t2, 25.0)] - 0.8) < 0.01 and abs(sm[0] - 0.2) < 1e-6


def test_validation_and_helpers():
    with pytest.raises(ValueError):
        segments_from_curve([0, 1], [0.1])
    assert segments_from_curve([], []) == []
    assert merge_hits([(150, 154, 1.0), (10, 12, 0.5), (50, 54, 2.0)], pad=30) == [
        (0.0, 84.0, 2.0), (120.0, 184.0, 1.0)]
    z = standardise_per_scale(np.array([0.5, 0.7, 0.2, 0.4]), ["2", "2", "32", "32"])
    np.testing.assert_allclose(z, [-1, 1, -1, 1])
    ms = [Moment("a", 0, 10, 1.0), Moment("a", 1, 10, 0.9), Moment("b", 0, 10, 0.8), Moment("a", 20, 25, 0.5)]
    assert [(m.source, m.t_start) for m in nms(ms)] == [("a", 0), ("b", 0), ("a", 20)]


# ---------------------------------------------------------------- planted vectors in a table


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """8 videos, 2 fps; each has 2 planted segments whose frames are exactly a concept vector."""
    rng = np.random.default_rng(7)
    concepts = unit(rng.normal(size=(16, DIM))).astype(np.float32)
    store = Store(tmp_path_factory.mktemp("db"), DIM)
    truth = {}
    items = []
    for v in range(8):
        duration = float(rng.integers(60, 120))
        times = np.arange(0, duration, 0.5)
        theme = unit(rng.normal(size=DIM))
        vecs = unit(theme + 0.8 * unit(rng.normal(size=(times.size, DIM))))
        a1 = float(rng.integers(5, duration / 2 - 20))
        a2 = float(rng.integers(duration / 2, duration - 20))
        cuts = []
        for j, a in enumerate((a1, a2)):
            length = float(rng.integers(3, 18))
            c = 2 * v + j
            vecs[(times >= a) & (times < a + length)] = concepts[c]
            truth[c] = Span(f"/videos/v{v}.mp4", a, a + length)
            cuts += [a, a + length]
        recs = build_records(times, vecs.astype(np.float32), cuts, duration, 2.0)
        items.append(SourceRows(path_bytes(f"/videos/v{v}.mp4"), 0.0, 1, f"h{v}", recs))
    store.replace_sources(items)
    return store.table, concepts, truth


def brute_ann(table):
    rows = table.search().where("kind = 'video_window'").select(["id", "vector"]).limit(None).to_arrow()
    ids = rows.column("id").to_pylist()
    mat = np.asarray(rows.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                     np.float32).reshape(len(ids), -1)

    def ann(vec, n, kind):
        assert kind == "video_window"
        sc = mat @ vec
        top = np.argsort(-sc)[:n]
        return [(ids[i], float(sc[i])) for i in top]

    return ann


def test_planted_moments_recovered_exactly_and_ranked(planted):
    table, concepts, truth = planted
    ann = brute_ann(table)
    catalog = WindowCatalog.build(table)
    assert len(catalog) == table.count_rows("kind = 'video_window'")
    for use_ann, cat in ((None, None), (ann, None), (ann, catalog), (ann, VideoCatalog.build(table))):
        preds, gts, ranked = [], [], []
        for c, gt in truth.items():
            ms = find_moments(concepts[c], table, k=5, ann_search=use_ann, catalog=cat)
            preds.append([Span(m.source, m.t_start, m.t_end) for m in ms])
            gts.append(gt)
            hits = rank_videos(concepts[c], table, k=3, ann_search=use_ann, catalog=cat)
            ranked.append([h.source for h in hits])
        assert recall_at_iou(preds, gts, 0.9) == 1.0
        assert mean_iou(preds, gts) > 0.97
        assert video_recall_at_k(ranked, [g.source for g in gts], k=1) == 1.0


def test_video_catalog_reads_the_same_frames_and_cuts_as_a_scan(tmp_path):
    """Frame rows by offset (after a replaced video left deleted rows behind) = a filtered scan."""
    from clipsearch.moments import _load_cuts, _load_frames

    rng = np.random.default_rng(11)
    store = Store(tmp_path / "db", DIM)

    def video(name, n, h):
        times = np.arange(0, n, 1.0)
        recs = build_records(times, unit(rng.normal(size=(n, DIM))).astype(np.float32), [3.0, 7.0],
                             float(n), 1.0)
        return SourceRows(path_bytes(name), 0.0, 1, h, recs)

    store.replace_sources([video("/v/a.mp4", 30, "1"), video("/v/b.mp4", 40, "1")])
    store.replace_sources([video("/v/c.mp4", 20, "1")])
    store.replace_sources([video("/v/a.mp4", 25, "2")])  # rewrites a.mp4: deletions in old fragments
    cat = VideoCatalog.build(store.table)
    regions = [("/v/a.mp4", 2.0, 12.0), ("/v/b.mp4", 30.0, 45.0), ("/v/c.mp4", 0.0, 5.5), ("/v/x.mp4", 0, 9)]
    src, t, thumbs, vecs = cat.frames(regions)
    ref_src, ref_t, ref_thumbs, ref_vecs = _load_frames(store.table, regions)
    got = sorted(zip(src, t, range(len(t)), strict=True))
    ref = sorted(zip(ref_src, ref_t, range(len(ref_t)), strict=True))
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in ref] and len(got) == 11 + 10 + 6
    np.testing.assert_array_equal(vecs[[i for *_, i in got]], ref_vecs[[i for *_, i in ref]])
    assert [thumbs[i] for *_, i in got] == [ref_thumbs[i] for *_, i in ref]
    want = _load_cuts(store.table, ["/v/a.mp4", "/v/c.mp4"])
    assert {k: v.tolist() for k, v in cat.cuts(["/v/a.mp4", "/v/c.mp4"]).items()} == \
        {k: v.tolist() for k, v in want.items()} == {"/v/a.mp4": [3.0, 7.0], "/v/c.mp4": [3.0, 7.0]}


def test_ranking_across_videos_prefers_the_stronger_match(tmp_path):
    rng = np.random.default_rng(3)
    concept = unit(rng.normal(size=DIM)).astype(np.float32)
    store = Store(tmp_path / "db", DIM)
    items = []
    strength = {"weak": 0.5, "strong": 1.5, "none": 0.0}
    for name, w in strength.items():
        times = np.arange(0, 60, 0.5)
        vecs = unit(rng.normal(size=(times.size, DIM)))
        inside = (times >= 20) & (times < 30)
        vecs[inside] = unit(w * concept + unit(rng.normal(size=(inside.sum(), DIM))) * 0.5)
        recs = build_records(times, vecs.astype(np.float32), [], 60.0, 2.0)
        items.append(SourceRows(path_bytes(f"/v/{name}.mkv"), 0.0, 1, name, recs))
    store.replace_sources(items)
    hits = rank_videos(concept, store.table, k=3)
    assert [h.source for h in hits[:2]] == ["/v/strong.mkv", "/v/weak.mkv"]
    ms = find_moments(concept, store.table, k=3)
    assert ms[0].source == "/v/strong.mkv"
    assert temporal_iou((ms[0].t_start, ms[0].t_end), (20, 30)) >= 0.8
    assert ms[0].score > ms[-1].score


def test_moment_score_is_absolute_so_videos_compare():
    # Video A: the true moment (0.8) inside similar surroundings (0.45). Video B: a weak match
    # (0.55) on an unrelated background (0.0). A contrast score (- mean of flanks) ranks B first.
    t = np.arange(0.0, 60.0, 0.5)
    a = np.where((t >= 20) & (t < 30), 0.8, np.where((t >= 10) & (t < 40), 0.45, 0.1))
    b = np.where((t >= 20) & (t < 30), 0.55, 0.0)
    best_a = segments_from_curve(t, a, cuts=[10.0, 20.0, 30.0, 40.0])[0]
    best_b = segments_from_curve(t, b, cuts=[20.0, 30.0])[0]
    assert (best_a.t_start, best_a.t_end) == (20.0, 30.0)
    assert best_a.score > best_b.score
    assert best_a.score == pytest.approx(0.8 + 0.5 * 0.8)
    contrast_a = segments_from_curve(t, a, cuts=[10.0, 20.0, 30.0, 40.0], flank_weight=1.0)[0]
    contrast_b = segments_from_curve(t, b, cuts=[20.0, 30.0], flank_weight=1.0)[0]
    assert contrast_a.score < contrast_b.score  # why the contrast term is off by default
