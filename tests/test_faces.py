"""Faces in the wild: the OpenCV detectors, ``lrfer-predict --detect --annotate`` on a group photo of a real
face, and ``dataset.crop=detect`` for KDEF and ExpW (tests/photo_fixtures.py builds the pictures from
scikit-image's astronaut photograph)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import numpy as np
import pytest
from conftest import REPO, compose_cfg
from photo_fixtures import background, group_photo, head, write_kdef_photos
from PIL import Image

from lrfer.core.errors import UserError
from lrfer.detect import HaarDetector, YuNetDetector, box_iou, build_detector, crop_box
from lrfer.detect.detectors import import_cv2
from lrfer.tools.photos import detector_config

cv2 = pytest.importorskip("cv2")
SIZES = (24, 48, 96)


@pytest.fixture(scope="module")
def canvas():
    return group_photo(SIZES)


def matched(truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For every true face, the IoU of the detection that overlaps it most."""
    return box_iou(truth, boxes).max(axis=1) if len(boxes) else np.zeros(len(truth))


# -- detectors --------
def test_haar_finds_each_pasted_face_of_24_48_and_96_px_and_nothing_else(canvas):
    image, truth = canvas
    detector = build_detector(detector_config())  # configs/detector/default.yaml: the Haar cascades
    assert isinstance(detector, HaarDetector)
    boxes, scores = detector.detect(image)
    assert (matched(truth, boxes) >= 0.5).all(), (boxes, truth)
    assert len(boxes) == len(SIZES)  # no false face on the background or the pasted heads
    assert list(scores) == sorted(scores, reverse=True) and (scores > 0).all()


def test_without_the_small_face_pass_haar_sees_only_larger_faces(canvas):
    image, truth = canvas
    boxes, _ = build_detector(detector_config(min_face=SIZES[1])).detect(image)  # no upsampled pass
    assert matched(truth, boxes)[0] < 0.5 and (matched(truth, boxes)[1:] >= 0.5).all()


def test_a_missing_opencv_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(UserError, match=r"pip install 'lrfer\[faces\]'"):
        import_cv2()


def test_yunet_maps_its_faces_back_to_the_photo(monkeypatch, tmp_path):
    """A stand-in for cv2.FaceDetectorYN (no model file ships): boxes come back in photo px, best first."""
    seen = {}

    class FakeYuNet:
        def setInputSize(self, size):
            seen["size"] = size

        def detect(self, image):
            faces = np.zeros((3, 15), np.float32)
            faces[:, :4] = [[48, 48, 48, 48], [200, 40, 96, 96], [0, 0, 20, 20]]  # px of the input
            faces[:, 14] = [0.7, 0.95, 0.9]
            return 1, faces

    monkeypatch.setattr(
        cv2, "FaceDetectorYN", type("YN", (), {"create": staticmethod(lambda *a: FakeYuNet())})
    )
    model = tmp_path / "yunet.onnx"
    model.write_bytes(b"onnx")
    detector = build_detector(detector_config(model=str(model), min_face=24))
    assert isinstance(detector, YuNetDetector)
    boxes, scores = detector.detect(np.zeros((100, 150, 3), np.uint8))
    assert seen["size"] == (300, 200)  # upsampled x2 so that 24 px faces are 48 px
    assert scores.tolist() == pytest.approx([0.95, 0.7])  # the 10 px face is below min_face
    assert boxes.tolist() == [[100, 20, 48, 48], [24, 24, 24, 24]]
    with pytest.raises(UserError, match="is not a file"):
        build_detector(detector_config(model=str(tmp_path / "missing.onnx")))


def test_crop_box_is_a_square_with_margin_kept_inside_the_photo():
    assert crop_box((40, 50, 20, 20), 0.5, 200, 100) == (30, 40, 70, 80)
    assert crop_box((0, 0, 20, 20), 0.5, 200, 100) == (0, 0, 40, 40)  # shifted in, still square
    assert crop_box((10, 10, 80, 80), 0.5, 200, 100) == (0, 0, 160, 100)  # taller than the photo: clipped


# -- lrfer-predict --detect --------
def load_predict():
    spec = importlib.util.spec_from_file_location(
        "predict_cli", REPO / "src" / "lrfer" / "cli" / "predict.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_predict_detect_classifies_every_face_and_draws_them(trained_run, canvas, tmp_path, capsys):
    image, truth = canvas
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image).save(photos / "canvas.png")
    Image.fromarray(background(120, 90)).save(photos / "wall.png")  # a photo without a face
    (photos / "broken.jpg").write_bytes(b"not an image")
    out, ann = tmp_path / "faces.csv", tmp_path / "annotated"
    argv = [
        str(trained_run),
        str(photos),
        "--detect",
        "--annotate",
        str(ann),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    load_predict().main(argv)
    printed = capsys.readouterr()
    assert "found 3 faces in 2 photos (1 without a face, 1 skipped)" in printed.out
    assert "wall.png: no face found" in printed.err and "broken.jpg: cannot read image" in printed.err

    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["canvas.png"] * 3  # one row per face
    boxes = np.array([[float(r[k]) for k in ("left", "top", "width", "height")] for r in rows])
    assert (box_iou(truth, boxes).max(axis=1) >= 0.5).all()
    assert [int(r["face_px"]) for r in rows] == pytest.approx(list(SIZES), rel=0.25)  # left to right
    probs = [sum(float(v) for k, v in r.items() if k.startswith("p_")) for r in rows]
    assert probs == pytest.approx([1.0] * 3, abs=1e-3)
    for r in rows:  # each face is classified from a crop at its own size
        assert int(r["crop_px"]) == pytest.approx(1.4 * int(r["face_px"]), abs=2)
        assert f"p_{r['prediction']}" in r and float(r["confidence"]) == float(r[f"p_{r['prediction']}"])

    drawn = np.asarray(Image.open(ann / "canvas_faces.png").convert("RGB"))
    assert drawn.shape == image.shape and sorted(p.name for p in ann.iterdir()) == [
        "canvas_faces.png",
        "wall_faces.png",
    ]
    changed = (drawn != image).any(axis=-1)
    for x, y, w, h in boxes.astype(int):  # the box outline is drawn, the face inside is left as it was
        assert changed[y + h // 2, x : x + 2].all() and not changed[y + h // 2, x + w // 2]


def test_predict_skips_a_photo_over_max_pixels_and_annotate_needs_detect(trained_run, tmp_path, capsys):
    Image.fromarray(head(40)[0]).save(tmp_path / "big.png")
    predict = load_predict()
    base = [str(trained_run), str(tmp_path / "big.png"), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]
    predict.main([*base, "--detect", "--max-pixels", "1000"])
    printed = capsys.readouterr()
    assert (
        "big.png: " in printed.err
        and "--max-pixels=1000" in printed.err
        and "0 faces in 0 photos" in printed.out
    )
    with pytest.raises(SystemExit) as exit_:
        predict.main([*base, "--annotate", str(tmp_path / "a")])
    assert exit_.value.code == 2 and "add --detect" in capsys.readouterr().err


# -- dataset.crop=detect --------
def load_dataset(root, tmp_path, *overrides):
    from lrfer.engine.run import load_data

    return load_data(compose_cfg(f"dataset.root={root}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides))


def test_kdef_crop_detect_crops_every_found_face_and_skips_pictures_without_one(tmp_path):
    root, truth = write_kdef_photos(tmp_path / "kdef", expressions=("HA",), empty=2)
    data = load_dataset(root, tmp_path, "dataset=kdef", "dataset.crop=detect", "dataset.num_folds=2")
    crop = data.info["crop"]
    assert (crop["detected"], crop["not_found"]) == (6, 2)
    assert sorted(f.rsplit("/", 1)[-1] for f in crop["not_found_files"]) == ["AF01SUS.JPG", "AM01SUS.JPG"]
    assert sum(len(s) for s in data.splits.values()) == 6 and data.summary()["crop"] == crop

    (entry,) = (tmp_path / "cache" / "kdef").iterdir()
    rows = list(csv.DictReader((entry / "crop_boxes.csv").open()))
    assert len(rows) == 8
    for row in rows:
        face = truth[row["file"].rsplit("/", 1)[-1]]
        if face is None:
            assert row["status"] == "not_found"
            continue
        left, top, right, bottom = (int(row[k]) for k in ("left", "top", "right", "bottom"))
        centre = np.array([(left + right) / 2, (top + bottom) / 2])
        assert np.abs(centre - (face[:2] + face[2:] / 2)).max() < 0.1 * face[3]  # centred on the real face
        assert 1.1 * face[3] < bottom - top < 1.8 * face[3]  # face box + margin

    fixed = load_dataset(root, tmp_path, "dataset=kdef", "dataset.crop=fixed", "dataset.num_folds=2")
    assert fixed.info["crop"] == {"mode": "fixed"} and sum(len(s) for s in fixed.splits.values()) == 8
    assert len(list((tmp_path / "cache" / "kdef").iterdir())) == 2  # the crop mode is part of the cache key
    with pytest.raises(UserError, match=r"dataset\.crop"):
        load_dataset(root, tmp_path, "dataset=kdef", "dataset.crop=guess", "dataset.num_folds=2")


def test_expw_crop_detect_keeps_labelled_faces_the_detector_confirms(tmp_path):
    photo = background(560, 260)
    lines, faces = [], []
    for j, (x, height) in enumerate(((20, 80), (300, 100))):
        patch, (bx, by, bw, bh) = head(height)
        photo[20 : 20 + patch.shape[0], x : x + patch.shape[1]] = patch
        left, top = round(x + bx), round(20 + by)
        faces.append((left, top, round(bw), round(bh)))
        lines.append(f"group.jpg {j} {top} {left} {left + round(bw)} {top + round(bh)} 90.0 3")
    lines.append("group.jpg 2 200 230 290 250 50.0 6")  # a labelled box on the wall: no face there
    (tmp_path / "expw" / "image" / "origin").mkdir(parents=True)
    Image.fromarray(photo).save(tmp_path / "expw" / "image" / "origin" / "group.jpg", quality=92)
    (tmp_path / "expw" / "label").mkdir()
    (tmp_path / "expw" / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    data = load_dataset(
        tmp_path / "expw", tmp_path, "dataset=expw", "dataset.crop=detect", "dataset.test_fraction=0.5"
    )
    assert (data.info["crop"]["detected"], data.info["crop"]["not_found"]) == (2, 1)
    (entry,) = (tmp_path / "cache" / "expw").iterdir()
    rows = list(csv.DictReader((entry / "crop_boxes.csv").open()))
    assert [r["label"] for r in rows if r["status"] == "not_found"] == ["6"]
    found = sorted((r for r in rows if r["status"] == "detected"), key=lambda r: int(r["left"]))
    for r, (x, _, w, h) in zip(found, faces, strict=True):
        side = int(r["bottom"]) - int(r["top"])
        assert (
            abs((int(r["left"]) + int(r["right"])) / 2 - (x + w / 2)) < 0.15 * h and 1.1 * h < side < 1.8 * h
        )


def test_prepare_data_reports_crops_and_skips(tmp_path, capsys):
    root, _ = write_kdef_photos(tmp_path / "kdef", expressions=("NE",), empty=1)
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "scripts" / "prepare_data.py")
    prepare_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_data)
    overrides = ["dataset=kdef", f"dataset.root={root}", "dataset.crop=detect", "dataset.num_folds=2"]
    prepare_data.main([*overrides, f"paths.cache_dir={tmp_path / 'cache'}"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["crop"]["mode"] == "detect"
    assert (summary["crop"]["detected"], summary["crop"]["not_found"]) == (6, 1)
    assert sum(s["n"] for s in summary["splits"].values()) == 6
