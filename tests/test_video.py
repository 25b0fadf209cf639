"""Faces in video (lrfer.tools.video, lrfer.detect.tracking, lrfer-predict RUN clip.avi / --camera): tracking
on generated clips with known face tracks (tests/video_fixtures.py), smoothing, the outputs and bad input."""

from __future__ import annotations

import _thread
import csv
import itertools
import json
import signal
import threading

import numpy as np
import pytest
import torch
from photo_fixtures import background, head
from PIL import Image
from video_fixtures import Mover, ScriptedDetector, render, synthetic_patch, write_clip

from lrfer.detect import box_iou
from lrfer.tools import video
from lrfer.tools.video import VideoSource, smoothing_weight, track_video, video_options

cv2 = pytest.importorskip("cv2")
EVERY = 5


class FixedClassifier:
    """Stands in for a trained run: the same probabilities for every face, or ``flicker`` ones per call."""

    class_names = ("a", "b", "c")

    def __init__(self, flicker: np.ndarray | None = None) -> None:
        self.flicker, self.calls = flicker, 0

    def classify(self, crops, batch_size=128):
        n = len(crops)
        if self.flicker is None:
            return torch.tensor([[0.2, 0.7, 0.1]]).repeat(n, 1), torch.ones(n)
        rows = self.flicker[self.calls : self.calls + n]
        self.calls += n
        return torch.as_tensor(rows, dtype=torch.float32), torch.ones(n)


def run_tracking(tmp_path, movers, frames, classifier=None, smooth=0.5, **scripted):
    """Write the clip, track it with the scripted detector; returns (emitted frames, stats, truth)."""
    images, truth = render(movers, frames)
    clip = write_clip(tmp_path / "clip.avi", images)
    detector = ScriptedDetector(truth, EVERY, **scripted)
    emitted = []
    options = video_options(detect_every=EVERY, smooth=smooth, tracker={"min_track": 10})
    stats = track_video(
        VideoSource(clip),
        detector,
        classifier or FixedClassifier(),
        options,
        lambda f, r: emitted.append((f, r)),
    )
    return emitted, stats, truth


@pytest.fixture(scope="module")
def faces():
    return [synthetic_patch(30, label, seed) for label, seed in ((3, 0), (0, 1), (6, 2))]


def crossing(faces) -> list[Mover]:
    """Face 0 left to right along the top, face 1 right to left along the bottom (their paths cross
    mid-clip), face 2 enters late through the bottom and leaves through the top before the end."""
    box = (0, 0, 30, 30)
    return [
        Mover(faces[0], box, (-5, 10), (150, 25), 0, 59),
        Mover(faces[1], box, (135, 80), (-20, 62), 0, 59),
        Mover(faces[2], box, (10, 125), (15, -30), 15, 40),
    ]


def test_tracks_keep_their_ids_while_faces_cross_enter_and_leave(tmp_path, faces):
    emitted, stats, truth = run_tracking(tmp_path, crossing(faces), 60)
    assert [f.index for f, _ in emitted] == list(range(60))  # every frame, in order
    assert (stats.kept, stats.dropped) == (3, 0)
    owner: dict[int, int] = {}  # track number -> the face it follows
    frames_of: dict[int, int] = {}
    for frame, rows in emitted:
        for row in rows:
            number = row.track.state["id"]
            faces_here = truth[frame.index]
            if not faces_here:
                continue
            m = max(faces_here, key=lambda k: box_iou(row.box, faces_here[k])[0, 0])
            assert box_iou(row.box, faces_here[m])[0, 0] > 0.5, (frame.index, number, row.box)
            assert owner.setdefault(number, m) == m, (
                f"track {number} jumped to face {m} on frame {frame.index}"
            )
            frames_of[number] = frames_of.get(number, 0) + 1
    assert sorted(owner) == [1, 2, 3] and sorted(owner.values()) == [0, 1, 2]  # one track per face
    for number, m in owner.items():  # each track covers the frames its face is in view, give or take a round
        in_view = sum(m in t for t in truth)
        assert in_view - 2 * EVERY <= frames_of[number] <= in_view + EVERY, (
            number,
            frames_of[number],
            in_view,
        )


def test_a_one_frame_false_box_is_dropped(tmp_path, faces):
    mover = [Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 39)]
    false = {15: [[100, 80, 24, 24]]}  # the detector fires once on the background
    emitted, stats, _ = run_tracking(tmp_path, mover, 40, false_boxes=false)
    assert (stats.kept, stats.dropped) == (1, 1)
    numbers = {row.track.state["id"] for _, rows in emitted for row in rows}
    assert numbers == {1}
    assert all(box_iou(row.box, np.array(false[15]))[0, 0] == 0 for _, rows in emitted for row in rows)


def test_a_face_missed_by_the_detector_for_a_round_keeps_its_track(tmp_path, faces):
    mover = [Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 39)]
    emitted, stats, _ = run_tracking(tmp_path, mover, 40, hidden={15: {0}, 20: {0}})
    assert (stats.kept, stats.dropped) == (1, 0)
    assert [len(rows) for _, rows in emitted] == [1] * 40


def test_smoothing_reduces_label_flicker_of_a_face_whose_label_is_constant(tmp_path, faces):
    rng = np.random.default_rng(0)
    noisy = rng.dirichlet([3.0, 2.0, 2.0], size=200)  # class "a" is the truth, but only on average
    mover = [Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 49)]
    flips = {}
    for smooth in (0.0, 0.5):
        emitted, _, _ = run_tracking(tmp_path, mover, 50, FixedClassifier(noisy), smooth=smooth)
        rows = [r for _, rs in emitted for r in rs]
        raw = [int(np.argmax(r.raw)) for r in rows]
        labels = [int(np.argmax(r.smoothed)) for r in rows]
        flips[smooth] = sum(a != b for a, b in itertools.pairwise(labels))
        if smooth == 0:
            assert labels == raw
        else:
            assert np.mean(np.array(labels) == 0) > np.mean(np.array(raw) == 0)
    assert flips[0.5] * 4 <= flips[0.0], flips


def test_smoothing_weight_is_an_exponential_half_life():
    assert smoothing_weight(0.5, 0.5) == pytest.approx(0.5)
    assert smoothing_weight(1.0, 0.5) == pytest.approx(0.75)
    assert smoothing_weight(0.04, 0.0) == 1.0  # no smoothing


# -- lrfer-predict RUN clip --------
def real_face_clip(path, frames=48, face=40, size=(200, 150)):
    """The astronaut's head (a real face the Haar cascade finds) drifting left to right."""
    patch, _ = head(face)
    base = background(*size)
    images = []
    for f in range(frames):
        image = base.copy()
        x, y = 10 + round(f * (size[0] - patch.shape[1] - 20) / (frames - 1)), (size[1] - patch.shape[0]) // 2
        image[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        images.append(image)
    return write_clip(path, images)


def predict(trained_run, *args):
    from lrfer.cli import predict as cli

    cli.main([str(trained_run), *map(str, args), "--device", "cpu"])


def test_predict_on_a_clip_writes_consistent_csv_summary_timeline_and_annotated_video(
    trained_run, tmp_path, capsys
):
    clip = real_face_clip(tmp_path / "clip.avi")
    out = tmp_path / "out"
    predict(trained_run, clip, "--annotate", out / "annotated.avi", "--out", out / "faces.csv")
    line = capsys.readouterr().out
    assert "1 face track in 48 frames" in line and "frames/s" in line
    assert sorted(p.name for p in out.iterdir()) == [
        "annotated.avi",
        "faces.csv",
        "faces_summary.json",
        "faces_timeline.png",
    ]  # fmt: skip  (and no temporary file left)

    rows = list(csv.DictReader((out / "faces.csv").open()))
    summary = json.loads((out / "faces_summary.json").read_text())
    assert summary["no_face"] is False and summary["frames"] == 48 and len(summary["tracks"]) == 1
    (track,) = summary["tracks"]
    assert {r["track"] for r in rows} == {"1"} and track["frames"] == len(rows) >= 40
    assert track["first_s"] == float(rows[0]["time"]) and track["last_s"] == float(rows[-1]["time"])
    labels = [r["prediction"] for r in rows]
    for name, share in track["share"].items():  # shares count the smoothed labels of the CSV
        assert share == pytest.approx(labels.count(name) / len(labels), abs=1e-4)
    assert track["dominant"] == max(set(labels), key=labels.count)
    names = summary["class_names"]
    for r in rows:
        smoothed = [float(r[f"p_{n}"]) for n in names]
        assert (
            sum(smoothed) == pytest.approx(1, abs=1e-3) and r["prediction"] == names[int(np.argmax(smoothed))]
        )
        assert float(r["face_px"]) == pytest.approx(40, rel=0.25)

    annotated = cv2.VideoCapture(str(out / "annotated.avi"))
    original = cv2.VideoCapture(str(clip))
    assert annotated.get(cv2.CAP_PROP_FRAME_COUNT) == 48
    ok, drawn = annotated.read()
    _, plain = original.read()
    x, y, w, h = (round(float(rows[0][k])) for k in ("left", "top", "width", "height"))
    changed = np.abs(drawn.astype(int) - plain.astype(int)).max(axis=-1) > 60
    assert ok and changed[y + h // 2, max(0, x - 1) : x + 2].any() and not changed[y + h // 2, x + w // 2]
    assert Image.open(out / "faces_timeline.png").size[0] > 300


def test_a_clip_without_a_face_gets_a_summary_saying_so(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "wall.avi", [background(160, 120)] * 30)
    predict(trained_run, clip, "--out", tmp_path / "faces.csv")
    assert "no face in 30 frames" in capsys.readouterr().out
    summary = json.loads((tmp_path / "faces_summary.json").read_text())
    assert summary["no_face"] is True and summary["tracks"] == [] and "no face found" in summary["message"]
    assert (tmp_path / "faces.csv").read_text().startswith("frame,time,track,")
    assert len((tmp_path / "faces.csv").read_text().splitlines()) == 1


def expect_user_error(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as exit_:
        fn(*args)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("kind", ["garbage", "zero_frames", "truncated_mp4"])
def test_an_unreadable_video_is_one_line_and_nothing_is_written(trained_run, tmp_path, capsys, kind):
    clip = tmp_path / ("clip.mp4" if kind != "zero_frames" else "clip.avi")
    if kind == "garbage":
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    elif kind == "zero_frames":
        cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120)).release()
    else:
        write_clip(clip, [background(160, 120)] * 20, fourcc="mp4v")
        clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # the index at its end is lost
    out = tmp_path / "out"
    err = expect_user_error(capsys, predict, trained_run, clip, "--out", out / "faces.csv")
    assert "cannot read video" in err or "cannot decode any frame" in err
    assert not out.exists()


def test_a_truncated_avi_is_processed_up_to_where_it_breaks_with_a_warning(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", [background(160, 120)] * 40)
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    predict(trained_run, clip, "--out", tmp_path / "faces.csv")
    printed = capsys.readouterr()
    assert "decoding stopped after" in printed.err and "of 40 frames" in printed.err
    summary = json.loads((tmp_path / "faces_summary.json").read_text())
    assert summary["truncated"] is True and 0 < summary["frames"] < 40


def test_an_unwritable_output_is_one_line_and_leaves_no_partial_file(trained_run, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.avi", [background(160, 120)] * 10)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    err = expect_user_error(capsys, predict, trained_run, clip, "--out", blocker / "faces.csv")
    assert f"cannot write {blocker / 'faces.csv'}" in err
    out = tmp_path / "out"
    err = expect_user_error(
        capsys, predict, trained_run, clip, "--out", out / "f.csv", "--annotate", out / "a.xyz"
    )
    assert "no video codec for .xyz" in err and list(out.iterdir()) == []  # the CSV's partial file is gone
    err = expect_user_error(
        capsys, predict, trained_run, clip, "--out", tmp_path / "f.csv", "--annotate", clip
    )
    assert "overwrite the input video" in err


# -- --camera --------
def test_camera_path_with_a_file_standing_in_stops_on_ctrl_c_and_writes_the_outputs(
    trained_run, tmp_path, capsys, monkeypatch, request
):
    clip = real_face_clip(tmp_path / "camera.avi", frames=200)
    reads = {"n": 0}

    class Camera:
        """The clip played as a live camera; Ctrl-C arrives after 60 frames."""

        def __init__(self, target):
            assert target == 0
            self.capture = cv2.VideoCapture(str(clip))

        def read(self):
            reads["n"] += 1
            if reads["n"] == 60:
                _thread.interrupt_main()  # what Ctrl-C does
            return self.capture.read()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(video, "open_capture", Camera)
    # interrupt_main calls the SIGINT handler: Python's own (KeyboardInterrupt), whatever an earlier test set
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    predict(
        trained_run, "--camera", "0", "--out", tmp_path / "faces.csv", "--annotate", tmp_path / "live.avi"
    )
    assert "(stopped by Ctrl-C)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "faces_summary.json").read_text())
    assert summary["interrupted"] is True and summary["input"] == "camera 0"
    assert 15 <= summary["frames"] < 60 and len(summary["tracks"]) == 1  # stops where it was
    times = [float(r["time"]) for r in csv.DictReader((tmp_path / "faces.csv").open())]
    assert times == sorted(times) and len(times) > 20  # live times come from the clock
    assert cv2.VideoCapture(str(tmp_path / "live.avi")).get(cv2.CAP_PROP_FRAME_COUNT) == summary["frames"]


def test_ctrl_c_while_a_frame_is_written_stops_at_the_chunk_end_and_counts_every_frame_written(
    tmp_path, faces, request
):
    images, truth = render([Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 59)], 60)
    clip = write_clip(tmp_path / "clip.avi", images)
    emitted, drawn = [], []

    def emit(frame, rows):  # two outputs (the table, the video); Ctrl-C lands between them on the 12th frame
        emitted.append(frame.index)
        if len(emitted) == 12:
            _thread.interrupt_main()
        drawn.append(frame.index)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    options = video_options(detect_every=EVERY, chunk=4, tracker={"min_track": 3})
    stats = track_video(VideoSource(clip), ScriptedDetector(truth, EVERY), FixedClassifier(), options, emit)
    assert stats.interrupted and 12 <= stats.frames < 30  # it stops near where it was
    assert emitted == list(range(stats.frames))  # the summary's count is what reached the outputs
    assert drawn == emitted  # no frame half written
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back


def test_ctrl_c_while_the_camera_sends_no_frame_stops_without_waiting_for_one(
    tmp_path, faces, monkeypatch, request
):
    images, truth = render([Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 59)], 60)
    source = VideoSource(write_clip(tmp_path / "clip.avi", images))
    closing, written, stall = threading.Event(), threading.Event(), {}
    frames = source.read

    def stalling_read():  # 20 frames, then the camera hangs; Ctrl-C comes once they are all written
        for index, frame in enumerate(frames()):
            if index == 20:
                written.wait(timeout=20)
                _thread.interrupt_main()
                stall["ended_by"] = "close" if closing.wait(timeout=20) else "timeout"
                return
            yield frame

    real_close = video.FrameReader.close

    def close(reader):
        closing.set()
        real_close(reader)

    monkeypatch.setattr(source, "read", stalling_read)
    monkeypatch.setattr(video.FrameReader, "close", close)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    options = video_options(detect_every=EVERY, tracker={"min_track": 3})
    emit = lambda frame, rows: frame.index == 19 and written.set()  # noqa: E731
    stats = track_video(source, ScriptedDetector(truth, EVERY), FixedClassifier(), options, emit)
    assert stats.interrupted and stats.frames == 20
    assert stall["ended_by"] == "close"  # the run stopped while the camera still hung


def test_no_camera_is_one_line(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(video, "open_capture", lambda target: cv2.VideoCapture())  # opens nothing
    err = expect_user_error(capsys, predict, trained_run, "--camera", "3", "--out", tmp_path / "f.csv")
    assert "no camera at --camera 3" in err and not (tmp_path / "f.csv").exists()


def test_detections_go_to_the_nearest_track_when_several_qualify():
    from lrfer.detect.tracking import FaceTracker

    tracks = [np.array([0.0, 0, 30, 30]), np.array([12.0, 0, 30, 30])]
    detections = np.array([[13.0, 1, 30, 30], [1.0, 1, 30, 30]])  # each overlaps both tracks (IoU >= 0.3)
    assert sorted(FaceTracker(video_options().tracker)._match(tracks, detections)) == [(0, 1), (1, 0)]


def test_a_large_face_is_followed_on_a_scaled_down_copy_of_the_frame(tmp_path, faces):
    mover = [Mover(faces[0], (0, 0, 30, 30), (5, 30), (120, 40), 0, 39)]
    images, truth = render(mover, 40)
    clip = write_clip(tmp_path / "clip.avi", images)
    emitted = []
    tracker = {"min_track": 10, "template_px": 12}  # the 30 px face is matched at 12 px
    options = video_options(detect_every=EVERY, tracker=tracker)
    detector = ScriptedDetector(truth, EVERY)
    track_video(VideoSource(clip), detector, FixedClassifier(), options, lambda f, r: emitted.append((f, r)))
    between = [(f.index, r) for f, rows in emitted for r in rows if f.index % EVERY]
    assert len(between) == 32
    for index, row in between:  # frames between detections: found by the template, in full-frame px
        assert box_iou(row.box, truth[index][0])[0, 0] > 0.75, (index, row.box, truth[index][0])
