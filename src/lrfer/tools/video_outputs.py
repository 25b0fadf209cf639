"""What ``lrfer-predict`` writes for a video: the per-face CSV, the annotated video, ``summary.json`` and the
timeline plot, each under a temporary name until :meth:`PartialFiles.commit` renames them all.

* CSV, one row per frame and kept track: ``frame, time`` (s), ``track`` (1, 2, ...), the box ``left, top,
  width, height`` (px of the frame), ``face_px`` (its height), ``crop_px`` (side of the crop classified),
  ``factor``, ``detected`` (1 on frames where the detector found this box, 0 where the tracker followed it),
  ``prediction`` and ``confidence`` (of the smoothed probabilities), ``p_<class>`` (smoothed) and
  ``raw_<class>`` (this frame alone).
* ``summary.json``: the input, frames, fps, processing speed and, per track, first and last time, duration,
  frames, mean face height, dominant expression and share of its frames per expression (by the smoothed
  label). A video without a face gets ``"no_face": true`` and a message saying so.
* The timeline (PNG): each track's smoothed probabilities over time, stacked, one panel per track.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lrfer.core.errors import UserError
from lrfer.detect.detectors import import_cv2
from lrfer.tools.photos import PALETTE

#: The timeline shows at most this many tracks (the longest ones); the summary lists all.
TIMELINE_TRACKS = 12
#: Queue length of frames waiting to be drawn and encoded.
WRITE_AHEAD = 16


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


class PartialFiles:
    """Output files written under temporary names (``.<stem>.partial-<pid><suffix>`` beside the final
    name) and renamed together by :meth:`commit`; :meth:`discard` removes them."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}

    def reserve(self, final: Path) -> Path:
        """The temporary path for ``final``, created empty now so that an unwritable place fails early."""
        final = Path(final)
        if final.is_dir():
            raise UserError(f"cannot write {final}: it is a folder; give a file name")
        tmp = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.touch()
        except OSError as err:
            raise UserError(f"cannot write {final}: {_reason(err)}; choose another place") from None
        self.files[final] = tmp
        return tmp

    def commit(self) -> None:
        for final, tmp in self.files.items():
            os.replace(tmp, final)
        self.files.clear()

    def discard(self) -> None:
        for tmp in self.files.values():
            tmp.unlink(missing_ok=True)
        self.files.clear()


class AnnotatedVideo:
    """Draws each frame's faces (box, track number, smoothed label and confidence) and encodes the frames,
    in a thread of its own."""

    def __init__(
        self, path: Path, final: Path, fps: float, size: tuple[int, int], class_names: Sequence[str]
    ):
        cv2 = import_cv2()
        fourcc = FOURCC.get(final.suffix.lower())
        if fourcc is None:
            raise UserError(
                f"--annotate {final}: no video codec for {final.suffix or 'a name without ending'}; "
                f"use one of {', '.join(sorted(FOURCC))}"
            )
        self.cv2, self.names = cv2, list(class_names)
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self.writer.isOpened():
            raise UserError(
                f"--annotate {final}: OpenCV cannot encode {fourcc} video here (codec missing); try .avi"
            )
        height = size[1]
        self.thickness = max(1, round(height / 240))
        self.scale = max(0.35, 0.5 * height / 480)
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_AHEAD)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lrfer-video-writer", daemon=True)
        self.thread.start()

    def add(self, bgr: np.ndarray, faces: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Queue a frame with its faces: (track number, box, smoothed probabilities)."""
        if self.error is not None:
            raise self.error
        self.queue.put((bgr, faces))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write(self.draw(*item))
                except BaseException as err:
                    self.error = err

    def draw(self, bgr: np.ndarray, faces: list[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
        cv2 = self.cv2
        image = bgr.copy()
        font = cv2.FONT_HERSHEY_SIMPLEX
        for track, box, probs in faces:
            k = int(np.argmax(probs))
            colour = PALETTE[k % len(PALETTE)][::-1]
            x, y, w, h = (round(float(v)) for v in box)
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, self.thickness)
            text = f"{track} {self.names[k]} {probs[k]:.2f}"
            (tw, th), base = cv2.getTextSize(text, font, self.scale, 1)
            ty = y - th - base - 2 if y - th - base - 2 >= 0 else min(y + h, image.shape[0] - th - base - 2)
            tx = min(max(0, x), max(0, image.shape[1] - tw - 4))
            cv2.rectangle(image, (tx, ty), (tx + tw + 4, ty + th + base + 2), colour, -1)
            cv2.putText(image, text, (tx + 2, ty + th + 1), font, self.scale, (255, 255, 255), 1, cv2.LINE_AA)
        return image

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.writer.release()
        if self.error is not None:
            raise self.error


#: The codec (FourCC) the annotated video is encoded with, by file name ending.
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


@dataclass
class TrackSummary:
    """What the summary and the timeline keep of one track."""

    number: int
    times: list[float] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    face_px: list[float] = field(default_factory=list)


class FaceTable:
    """The CSV, written as frames arrive, and the per-track series for the summary and the timeline."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.names = list(class_names)
        self.fields = [
            "frame", "time", "track", "left", "top", "width", "height", "face_px", "crop_px", "factor",
            "detected", "prediction", "confidence", *(f"p_{n}" for n in self.names),
            *(f"raw_{n}" for n in self.names),
        ]  # fmt: skip
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.fields)
        self.writer.writeheader()
        self.tracks: dict[int, TrackSummary] = {}

    def add(self, frame: int, time: float, number: int, box, crop_px: int, factor: float, detected: bool,
            smoothed: np.ndarray, raw: np.ndarray) -> None:  # fmt: skip
        x, y, w, h = (round(float(v), 1) for v in box)
        k = int(np.argmax(smoothed))
        row = {
            "frame": frame, "time": round(time, 4), "track": number, "left": x, "top": y, "width": w,
            "height": h, "face_px": h, "crop_px": crop_px, "factor": round(factor, 3),
            "detected": int(detected), "prediction": self.names[k],
            "confidence": round(float(smoothed[k]), 4),
        }  # fmt: skip
        row.update({f"p_{n}": round(float(v), 4) for n, v in zip(self.names, smoothed)})
        row.update({f"raw_{n}": round(float(v), 4) for n, v in zip(self.names, raw)})
        self.writer.writerow(row)
        series = self.tracks.setdefault(number, TrackSummary(number))
        series.times.append(time)
        series.probs.append(np.asarray(smoothed, np.float64))
        series.face_px.append(h)

    def close(self) -> None:
        self.file.close()


def summarise(tracks: dict[int, TrackSummary], class_names: Sequence[str]) -> list[dict]:
    """Per track: first / last time, duration, frames, mean face height, dominant expression, shares."""
    out = []
    for number in sorted(tracks):
        s = tracks[number]
        labels = np.argmax(np.stack(s.probs), axis=1)
        counts = np.bincount(labels, minlength=len(class_names))
        share = counts / counts.sum()
        out.append(
            {
                "track": number,
                "first_s": round(s.times[0], 3),
                "last_s": round(s.times[-1], 3),
                "duration_s": round(s.times[-1] - s.times[0], 3),
                "frames": len(s.times),
                "face_px": round(float(np.mean(s.face_px)), 1),
                "dominant": class_names[int(np.argmax(counts))],
                "share": {n: round(float(v), 4) for n, v in zip(class_names, share)},
            }
        )
    return out


def write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def plot_timeline(
    path: Path, tracks: dict[int, TrackSummary], class_names: Sequence[str], title: str
) -> None:
    """Each track's smoothed probabilities over time (stacked areas in the class colours), one panel per
    track, the :data:`TIMELINE_TRACKS` longest tracks at most; a video without a face gets a panel saying
    so."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    shown = sorted(tracks.values(), key=lambda s: -len(s.times))[:TIMELINE_TRACKS]
    shown.sort(key=lambda s: s.number)
    colours = [tuple(c / 255 for c in PALETTE[k % len(PALETTE)]) for k in range(len(class_names))]
    fig, axes = plt.subplots(
        max(1, len(shown)), 1, figsize=(8, 0.6 + 1.1 * max(1, len(shown))), sharex=True, squeeze=False
    )
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    for ax, s in zip(axes[:, 0], shown):
        probs = np.stack(s.probs)
        ax.stackplot(s.times, probs.T, colors=colours, labels=class_names, linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 1])
        ax.set_ylabel(f"track {s.number}", rotation=0, ha="right", va="center")
    if shown:
        axes[-1, 0].set_xlabel("time (s)")
        axes[0, 0].legend(
            loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(class_names), fontsize=7, frameon=False
        )
    more = f" ({len(shown)} longest of {len(tracks)} tracks)" if len(tracks) > len(shown) else ""
    fig.suptitle(title + more, fontsize=9, y=0.995)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
