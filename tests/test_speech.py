"""Speech (issue #20): audio files and videos' audio tracks transcribed by PocketSphinx (the
offline test engine), searched by what is said, fused with what is seen; incremental, bad input,
and the engine or its weights missing. The phrases are synthesised with espeak-ng."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import ServerThread, tiny_model_args, write_shapes

from clipsearch.audio_stream import RATE, StreamInfo, pcm_blocks, voiced_regions
from clipsearch.video_metrics import temporal_iou

speech_synth = pytest.importorskip("clipsearch.tiny.speech_synth")
if not speech_synth.have_espeak():
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): the speech tests need it to "
                "synthesise their phrases", allow_module_level=True)
pytest.importorskip("pocketsphinx",
                    reason="the speech tests run PocketSphinx (pip install 'clipsearch[speech]')")

PHRASES = speech_synth.PHRASES
# Three videos of two shape segments, each saying two phrases; an audio file saying two more.
VIDEOS = [
    ("v0.mp4", [("red", "star", 6), ("blue", "circle", 6)], [(1.0, PHRASES[0]), (7.0, PHRASES[1])]),
    ("v1.mp4", [("green", "square", 6), ("yellow", "triangle", 6)], [(1.0, PHRASES[2]), (7.0, PHRASES[3])]),
    ("v2.mp4", [("blue", "star", 6), ("red", "circle", 6)], [(1.5, PHRASES[4]), (7.5, PHRASES[5])]),
]
AUDIO_SAID = [(1.0, PHRASES[6]), (6.0, PHRASES[7])]
R1_FLOOR = 0.75  # speech phrase R1@0.5 on these 8 phrases (benchmarks/words.py: the full set)


def _write_media(folder: Path) -> dict[str, list[dict]]:
    """The spoken media; returns {file name: spoken truth}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth = {}
    for name, segments, said in VIDEOS:
        _, truth[name] = speech_synth.write_spoken_video(folder / name, segments, said, rng)
    pcm, truth["talk.mp3"] = speech_synth.place(11.0, AUDIO_SAID)
    speech_synth.write_audio(folder / "talk.mp3", pcm)
    speech_synth.write_audio(folder / "quiet.flac", np.zeros(RATE * 4, np.float32))  # audio, no speech
    (folder / "broken.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x10" + os.urandom(4000))
    return truth


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """(collection, truth, files folder, report): the media indexed once with --asr on."""
    from clipsearch import Collection

    base = tmp_path_factory.mktemp("speech")
    truth = _write_media(base / "files")
    write_shapes(base / "files" / "images", per_class=1)
    col = Collection.create(base / "db", device="cpu", **tiny_model_args())
    report = col.add([base / "files"], options={"asr": "on", "asr_model": "pocketsphinx"}, workers=2)
    return col, truth, base / "files", report


def _speech_rows(col, where: str = "kind = 'speech'") -> list[dict]:
    return col.store.scan(["source", "kind", "t_start", "t_end", "text", "extra"], where).to_pylist()


# ---------------------------------------------------------------- the gate


def test_the_gate_finds_spoken_stretches_and_bounds_them():
    tone = (0.3 * np.sin(np.arange(RATE * 3) * 2 * np.pi * 220 / RATE)).astype(np.float32)
    pcm = np.concatenate([np.zeros(RATE * 2, np.float32), tone, np.zeros(RATE * 2, np.float32),
                          tone[: RATE], np.zeros(RATE, np.float32)])
    blocks = [pcm[i:i + 1000] for i in range(0, len(pcm), 1000)]
    regions = list(voiced_regions(iter(blocks)))
    assert [r.t0 for r in regions] == pytest.approx([1.85, 6.85], abs=0.04)  # each onset less 0.15 s
    assert [r.seconds for r in regions] == pytest.approx([3.3, 1.3], abs=0.04)  # and a pad at the end
    # a long loud stretch comes out in regions of at most max_region_s: memory stays bounded
    long = list(voiced_regions(iter([np.tile(tone, 10)]), max_region_s=5.0))
    assert len(long) == 6 and max(r.seconds for r in long) <= 5.0 + 0.03  # to a 30 ms frame


def test_ten_hours_of_silence_cost_a_decode_and_no_recognition(tmp_path, monkeypatch):
    """A 10-hour silent file: streamed (frames below the gate are not even resampled), no
    region reaches the engine, and the file is indexed as audio with no speech."""
    import av

    from clipsearch import Collection, speech

    path = tmp_path / "files" / "night.flac"
    path.parent.mkdir()
    with av.open(str(path), "w") as out:
        s = out.add_stream("flac", rate=8000, options={"frame_size": "32768"})
        s.layout = "mono"
        zeros = np.zeros((1, 32768), np.int16)
        for i in range(0, 36000 * 8000, 32768):
            f = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            f.sample_rate, f.pts = 8000, i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    info = StreamInfo()
    assert list(voiced_regions(pcm_blocks(path, info), info)) == []
    assert info.duration == pytest.approx(36000, abs=5) and info.voiced == 0

    def deaf(self, pcm, t0=0.0):
        raise AssertionError("silence reached the recogniser")

    monkeypatch.setattr(speech.PocketSphinxEngine, "transcribe", deaf)
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    report = col.add([tmp_path / "files"], options={"asr": "on", "asr_model": "pocketsphinx"})
    assert report.indexed == 1 and not report.skipped
    (row,) = _speech_rows(col, "kind = 'audio'")
    extra = json.loads(row["extra"])
    assert extra["segments"] == 0 and extra["voiced"] == 0
    assert extra["duration"] == pytest.approx(36000, abs=5)


# ---------------------------------------------------------------- indexing


def test_audio_files_are_told_by_content(tmp_path):
    from clipsearch.indexers.audio import AudioIndexer
    from clipsearch.indexers.base import default_indexers, is_batched, is_streaming

    ix = next(i for i in default_indexers() if i.medium == "audio")
    assert not is_batched(ix) and not is_streaming(ix)
    pcm = np.zeros(RATE, np.float32)
    for ext in (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"):
        path = speech_synth.write_audio(tmp_path / f"a{ext}", pcm)
        assert AudioIndexer().accepts(path, path.read_bytes()[:64]), ext
    fake = tmp_path / "photo.mp3"
    fake.write_bytes(b"\xff\xd8\xff\xe0" + bytes(60))  # a JPEG under an audio name
    assert not AudioIndexer().accepts(fake, fake.read_bytes())


def test_audio_files_and_video_tracks_become_speech_rows(spoken):
    col, truth, folder, report = spoken
    rows = _speech_rows(col)
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(os.path.basename(r["source"]), []).append(r)
    assert set(by_source) == {"v0.mp4", "v1.mp4", "v2.mp4", "talk.mp3"}
    for name, said in truth.items():
        segs = sorted(by_source[name], key=lambda r: r["t_start"])
        assert len(segs) == len(said), (name, segs)
        for seg, t in zip(segs, said, strict=True):  # each phrase heard where it is said
            assert temporal_iou((seg["t_start"], seg["t_end"]), (t["t_start"], t["t_end"])) >= 0.5
            assert json.loads(seg["extra"])["asr"] == "pocketsphinx:en-us"
    audio = {os.path.basename(r["source"]): json.loads(r["extra"])
             for r in _speech_rows(col, "kind = 'audio'")}
    assert audio["talk.mp3"]["segments"] == 2 and audio["talk.mp3"]["asr"] == "pocketsphinx:en-us"
    assert audio["quiet.flac"]["segments"] == 0  # audio with no speech: indexed, nothing said
    videos = _speech_rows(col, "kind = 'video'")
    assert all(json.loads(v["extra"])["asr"] == "pocketsphinx:en-us" for v in videos)
    skipped = dict((os.path.basename(p), why) for p, why in report.skipped)
    assert "broken.mp3" in skipped and "audio" in skipped["broken.mp3"], skipped  # one line, the job went on
    assert col.meta.get("speech_complete") is True


def test_spoken_phrases_are_found_where_they_are_said(spoken):
    """Phrase R1@0.5: the first `--kind speech` hit is in the right file and overlaps the
    spoken span with IoU >= 0.5."""
    col, truth, _, _ = spoken
    hits = 0
    queries = [(name, t) for name, said in truth.items() for t in said]
    for name, t in queries:
        found = col.search(text=t["phrase"], kind="speech", k=5)
        top = found[0]
        assert top.kind == "speech" and top.text and top.extra["evidence"] == "speech"
        if os.path.basename(top.source) == name and \
                temporal_iou((top.t_start, top.t_end), (t["t_start"], t["t_end"])) >= 0.5:
            hits += 1
    assert hits / len(queries) >= R1_FLOOR, f"speech phrase R1@0.5 {hits}/{len(queries)}"


def test_moments_say_whether_they_were_seen_heard_or_both(spoken):
    from clipsearch.moments import find_moments

    col, truth, _, _ = spoken
    # Moments count words said only when a segment holds every word of the query (so a visual
    # query is never outvoted by one of its words said somewhere): the phrases heard word for word
    heard = {r["text"] for r in _speech_rows(col)}
    whole = [(name, t) for name, said in truth.items() for t in said if t["phrase"] in heard]
    assert len(whole) >= 4, heard
    for name, said in whole:
        top = col.moments(text=said["phrase"], k=5)[0]
        assert os.path.basename(top.source) == name and top.extra["evidence"] in ("speech", "both")
        assert temporal_iou((top.t_start, top.t_end), (said["t_start"], said["t_end"])) >= 0.5
        assert top.text == said["phrase"]  # the words said there
    # a visual query that nobody says: the visual moments exactly as before, marked visual
    query = "a green square"
    hits = col.moments(text=query, k=5)
    plain = find_moments(col.encoder.encode_texts([query])[0], col.store.table, k=5)
    assert [(h.source, round(h.t_start, 3)) for h in hits] == [(m.source, round(m.t_start, 3)) for m in plain]
    assert {h.extra["evidence"] for h in hits} == {"visual"}
    assert os.path.basename(hits[0].source) == "v1.mp4" and hits[0].t_start < 6.0


def test_the_default_search_hears_the_words_too(spoken):
    """Over all kinds: a phrase said in an audio file ranks first as a speech hit, one said in a
    video brings that video ("both" when its frames were found too); a visual query is as before."""
    col, truth, _, _ = spoken
    said = truth["talk.mp3"][1]
    top = col.search(text=said["phrase"], k=5)[0]
    assert top.kind == "speech" and top.source.endswith("talk.mp3") and top.extra["evidence"] == "speech"
    said = truth["v2.mp4"][1]
    top = col.search(text=said["phrase"], k=5)[0]
    assert top.source.endswith("v2.mp4") and top.text == said["phrase"]
    assert top.extra["evidence"] in ("speech", "both")
    visual = col.search(text="a red star", k=5)
    assert all("evidence" not in h.extra for h in visual)  # untouched: no segment says it


def test_speech_hits_are_words_relevant_and_switchable(spoken):
    """Speech is a source of words like OCR: its hits pass the auto relevance cut, say they were
    found by words, rank alone with `words_only`, and vanish with `visual_only`."""
    col, truth, _, _ = spoken
    heard = {r["text"] for r in _speech_rows(col)}
    said = next(t for t in truth["talk.mp3"] if t["phrase"] in heard)  # heard word for word
    cut = col.search(text=said["phrase"], k=5, min_relevance="auto")
    top = cut[0]
    assert top.kind == "speech" and top.source.endswith("talk.mp3") and top.relevance >= 0.5
    assert top.extra["matched"] == "words" and top.extra["words"] == "speech"
    assert temporal_iou((top.t_start, top.t_end), (said["t_start"], said["t_end"])) >= 0.5
    words = col.search(text=said["phrase"], k=5, words_only=True)
    assert words and words[0].kind == "speech" and words[0].source.endswith("talk.mp3")
    assert all(h.extra.get("matched") == "words" for h in words)
    seen = col.search(text=said["phrase"], k=5, visual_only=True)
    assert seen and all(h.kind != "speech" and "evidence" not in h.extra for h in seen)
    spoken_hits = col.search(text=said["phrase"], kind="speech", k=5, min_relevance="auto")
    assert spoken_hits[0].source.endswith("talk.mp3") and spoken_hits[0].relevance >= 0.5
    moment = col.search(text=said["phrase"], kind="moment", k=5, min_relevance="auto")
    assert moment and moment[0].source.endswith("talk.mp3") and moment[0].extra["evidence"] == "speech"


# ---------------------------------------------------------------- incremental and crash-safe


def _copy_media(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("broken.mp3"))
    return dst


def test_turning_asr_on_transcribes_only_what_lacks_it(spoken, tmp_path, monkeypatch):
    """Indexed with --asr off first; then --asr on adds the speech rows without calling the
    image tower (frames and images are not embedded again), and a crash midway loses nothing."""
    from clipsearch import Collection, speech_backfill

    _, _, folder, _ = spoken
    files = _copy_media(folder, tmp_path / "files")
    col = Collection.create(tmp_path / "db", device="cpu", **tiny_model_args())
    first = col.add([files], options={"asr": "off"})
    assert first.indexed == 17 and not _speech_rows(col)
    assert not col.meta.get("speech_complete")
    unheard = {os.path.basename(r["source"]) for r in speech_backfill.lacking(col.store)}
    assert unheard == {"v0.mp4", "v1.mp4", "v2.mp4", "talk.mp3", "quiet.flac"}
    versions_before = {r["id"] for r in col.store.scan(["id"], "kind != 'speech'").to_pylist()}

    def no_images(*args, **kwargs):
        raise AssertionError("the image tower was called")

    enc = col.writing_encoder()
    monkeypatch.setattr(enc, "encode_images", no_images)
    monkeypatch.setattr(enc, "encode_batch", no_images)
    # a crash after the second file: the two committed files keep their speech
    real = speech_backfill.transcribe_file
    calls = []

    def crashing(path, engine, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, engine, **kw)

    monkeypatch.setattr(speech_backfill, "transcribe_file", crashing)
    opts = {"asr": "on", "asr_model": "pocketsphinx"}
    cut = col.add([files], options=opts)
    assert cut.interrupted and cut.transcribed == 2
    assert len(speech_backfill.lacking(col.store)) == 3
    monkeypatch.setattr(speech_backfill, "transcribe_file", real)
    rest = col.add([files], options=opts)
    assert rest.indexed == 0 and rest.transcribed == 3 and not rest.interrupted
    assert speech_backfill.lacking(col.store) == []
    assert col.meta.get("speech_complete") is True
    assert {os.path.basename(r["source"]) for r in _speech_rows(col)} == {"v0.mp4", "v1.mp4", "v2.mp4",
                                                                       "talk.mp3"}
    assert len(_speech_rows(col)) == 8  # no duplicates from the cut run
    assert versions_before <= {r["id"] for r in col.store.scan(["id"], "kind != 'speech'").to_pylist()}
    found = col.search(text=PHRASES[7], kind="speech", k=1)[0]  # the full-text index has the new rows
    assert found.source.endswith("talk.mp3") and "keyword" in found.extra["signals"]
    again = col.add([files], options=opts)  # nothing left: not even the table is asked
    assert again.transcribed == 0 and again.indexed == 0


# ---------------------------------------------------------------- engines


def test_engine_choice_and_its_one_line_reasons(tmp_path, monkeypatch):
    from clipsearch import speech
    from clipsearch.errors import ModelUnavailable

    monkeypatch.setenv("CLIPSEARCH_OFFLINE", "1")  # the cache only, whatever huggingface_hub thinks
    assert speech.open_engine("off") is None
    assert speech.open_engine("auto").id == "pocketsphinx:en-us"  # no Whisper weights here
    with pytest.raises(ModelUnavailable) as e:
        speech.open_engine("on", "base")
    assert "Whisper weights 'base'" in str(e.value) and "is not cached" in str(e.value)
    assert "\n" not in str(e.value) and e.value.hint
    empty = tmp_path / "my-whisper"
    empty.mkdir()
    with pytest.raises(ModelUnavailable, match="has no model.bin"):
        speech.open_engine("on", str(empty))
    assert speech.open_engine("auto", "base") is None  # auto: that engine cannot run, so none
    monkeypatch.setattr(speech, "installed", lambda module: False)
    assert speech.open_engine("auto") is None
    with pytest.raises(speech.SpeechUnavailable) as e:
        speech.open_engine("on")
    assert "clipsearch[speech]" in e.value.hint
    with pytest.raises(Exception, match="--asr 'loud'"):
        speech.open_engine("loud")


def test_whisper_segments_are_placed_in_the_file(monkeypatch):
    """The Whisper engine's plumbing with a stand-in for the CTranslate2 model (no weights can
    be had here): VAD asked for, the language passed on, times offset by the region's start."""
    import threading
    from types import SimpleNamespace

    from clipsearch import speech

    asked = {}

    class Model:
        def transcribe(self, audio, **kw):
            asked.update(kw, n=len(audio), dtype=audio.dtype)
            return iter([SimpleNamespace(start=0.2, end=1.4, text=" Hello there. "),
                         SimpleNamespace(start=2.0, end=2.5, text=" ")]), None

    engine = object.__new__(speech.WhisperEngine)
    engine._model, engine.language, engine.id, engine._lock = Model(), "en", "whisper:base", threading.Lock()
    segs = engine.transcribe(np.zeros(RATE * 3, np.float64), t0=10.0)
    assert segs[0] == speech.Segment(10.2, 11.4, "Hello there.")
    assert asked["vad_filter"] is True and asked["language"] == "en" and asked["dtype"] == np.float32
    assert speech.whisper_repo("small") == "Systran/faster-whisper-small"
    assert speech.whisper_repo("me/my-whisper") == "me/my-whisper"


def test_absent_weights_are_one_line_and_the_job_goes_on(spoken, tmp_path):
    """`index --asr on --asr-model base` with no Whisper weights: one warning line, every file
    indexed all the same (audio without speech), exit 0; a later run with an engine fills it in."""
    _, _, folder, _ = spoken
    files = tmp_path / "files"
    files.mkdir()
    for name in ("talk.mp3", "quiet.flac"):
        (files / name).write_bytes((folder / name).read_bytes())
    write_shapes(files / "images", per_class=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    model = tiny_model_args()["model"]
    p = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(files), "--db", str(tmp_path / "db"),
                        "--model", model, "--device", "cpu", "-q", "--asr", "on", "--asr-model", "base"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "indexed 14 files" in p.stdout
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "speech not transcribed" in ln]
    assert lines and all("HF_HUB_OFFLINE" in ln for ln in lines), p.stdout + p.stderr
    from clipsearch import Collection

    col = Collection.open(tmp_path / "db", device="cpu")
    assert not _speech_rows(col) and len(_speech_rows(col, "kind = 'audio'")) == 2
    later = col.add([files], asr="on", asr_model="pocketsphinx")  # the keywords of the options
    assert later.transcribed == 2 and len(_speech_rows(col)) == 2


# ---------------------------------------------------------------- HTTP


def test_http_speech_search_and_moments(spoken):
    from clipsearch.ui.server import build_app

    col, truth, _, _ = spoken
    said = truth["talk.mp3"][1]
    with ServerThread(build_app(col.path, device="cpu")) as srv:
        r = httpx.get(srv.url + "/api/search", params={"q": said["phrase"], "kind": "speech", "k": 3},
                      timeout=120)
        assert r.status_code == 200
        top = r.json()["hits"][0]
        assert top["kind"] == "speech" and top["name"] == "talk.mp3" and top["text"]
        assert temporal_iou((top["t_start"], top["t_end"]), (said["t_start"], said["t_end"])) >= 0.5
        media = httpx.get(srv.url + top["media_url"], timeout=60)
        assert media.status_code == 200 and media.headers["content-type"].startswith("audio/")
        phrase = truth["v2.mp4"][1]["phrase"]  # heard word for word (see the moments test)
        m = httpx.get(srv.url + "/api/moments", params={"q": phrase, "k": 3}, timeout=120).json()["hits"]
        assert m[0]["name"] == "v2.mp4" and m[0]["evidence"] in ("speech", "both") and m[0]["text"]
        bad = httpx.get(srv.url + "/api/search", params={"q": "  ", "kind": "speech"}, timeout=60)
        assert bad.status_code == 400
