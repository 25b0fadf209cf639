"""Faces in video: detect, track, classify and smooth every face of a video file or a live camera.

Used by ``lrfer-predict RUN clip.mp4 [--annotate out.mp4] [--out faces.csv]`` and ``lrfer-predict RUN --camera
0``. Three stages run side by side: a reader thread decodes frames and runs the face detector on every
``detect_every``-th one; the main thread follows the faces (:mod:`lrfer.detect.tracking`), crops them and
classifies the faces of several frames in one batch on the run's device (:class:`~lrfer.tools.photos.
FaceClassifier`: each face cropped at its real size and resized once to the network input, as in training);
a writer thread draws and encodes the annotated video. OpenCV and torch release the GIL in their kernels, so
the stages overlap on a multi-core CPU.

Each track's class probabilities are smoothed over time by an exponential moving average with half-life
``smooth`` seconds (``p <- p + a (q - p)``, ``a = 1 - 0.5 ** (dt / smooth)``; 0 = no smoothing). A track is
kept when it is confirmed (:meth:`~lrfer.detect.tracking.Track.confirmed`: its detections span at least
``min_track`` frames); other tracks are false detections and dropped, as are the frames a track coasted
through after it was last seen (detected, or found by its template). A frame is written once every track on
it is decided, so the outputs lag the input by a few detection rounds and hold kept tracks only; kept tracks
are numbered 1, 2, ... in the order they appear.

All outputs are written under temporary names next to their final ones and renamed at the end: an error
leaves nothing half-written. Ctrl-C stops reading and writes the outputs of the frames read so far.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING, OmegaConf

from lrfer.config.tree import CONFIG_DIR
from lrfer.core.errors import UserError
from lrfer.core.signals import DeferredSignal
from lrfer.detect.detectors import FaceDetector, build_detector, import_cv2
from lrfer.detect.tracking import FaceTracker, Track, TrackerConfig
from lrfer.tools import video_outputs as vo
from lrfer.tools.photos import FaceClassifier, detector_config, face_crops

log = logging.getLogger(__name__)

#: File name endings taken as videos (anything OpenCV's FFmpeg decodes works; these select the video path).
VIDEO_SUFFIXES = {
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts",
    ".m2ts", ".ogv",
}  # fmt: skip
#: Frame rate assumed when the container gives none.
DEFAULT_FPS = 25.0
#: How many decoded frames the reader may run ahead of the classifier.
READ_AHEAD = 32
#: How often (seconds) a wait for the next frame looks whether Ctrl-C asked to stop.
STOP_POLL_S = 0.1
#: A file whose decoding stops more than this share of its announced frames early is called truncated.
TRUNCATED_SHARE = 0.02


@dataclass
class VideoOptions:
    """What ``lrfer-predict`` passes for a video: detection period, smoothing half-life (s), crop margin, the
    tracker's settings and the classification batch (faces) and chunk (frames classified together). Types
    only: the values are ``configs/video/default.yaml`` (the margin: the detector's), see
    :func:`video_options`."""

    detect_every: int = MISSING
    smooth: float = MISSING
    margin: float = MISSING
    tracker: TrackerConfig = MISSING
    batch_size: int = MISSING
    chunk: int = MISSING


#: How lrfer-predict follows faces through a video: the one source of the video and tracker defaults.
VIDEO_CONFIG = CONFIG_DIR / "video" / "default.yaml"


def video_options(tracker: dict | None = None, **values) -> VideoOptions:
    """:data:`VIDEO_CONFIG` and the detector's margin (:func:`lrfer.tools.photos.detector_config`), typed
    (:class:`VideoOptions`), with ``values`` (the command line's) and ``tracker`` (some of
    :class:`TrackerConfig`'s fields) in place of their own."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(VideoOptions),
        {"margin": detector_config().margin},
        OmegaConf.load(VIDEO_CONFIG),
        values,
        {"tracker": tracker or {}},
    )
    return OmegaConf.to_object(cfg)


@dataclass
class Frame:
    """A decoded frame: its index, time (s), BGR / RGB / grey pixels and, on a detection frame, the boxes."""

    index: int
    time: float
    bgr: np.ndarray
    rgb: np.ndarray | None  # freed once the frame is classified
    grey: np.ndarray | None
    detections: np.ndarray | None = None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_capture(target: int | str):
    """``cv2.VideoCapture`` of a camera index or a file (a seam for tests: a file stands in for a camera)."""
    return import_cv2().VideoCapture(target)


class VideoSource:
    """Frames of a video file or a live camera, with their times; ``live`` times come from the clock."""

    def __init__(self, target: int | Path) -> None:
        cv2 = import_cv2()
        self.live = isinstance(target, int)
        self.name = f"camera {target}" if self.live else str(target)
        if not self.live and not Path(target).is_file():
            raise UserError(f"{target} does not exist: give a video file")
        self.capture = open_capture(target if self.live else str(target))
        if not self.capture.isOpened():
            self.capture.release()
            if self.live:
                raise UserError(
                    f"no camera at --camera {target}: OpenCV cannot open it (none connected, or no "
                    "permission to /dev/video*); give a video file instead"
                )
            raise UserError(
                f"cannot read video {target}: not a video, damaged, or its codec is not in OpenCV"
            )
        ok, first = self.capture.read()
        if not ok or first is None:
            self.capture.release()
            raise UserError(
                f"cannot decode any frame of {self.name}: it has no frames, is truncated, or its codec is "
                "not in OpenCV's FFmpeg; re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
            )
        self.first = first
        self.height, self.width = first.shape[:2]
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.live else None

    def read(self) -> Iterator[np.ndarray]:
        """BGR frames, the first one included, until the stream ends."""
        frame = self.first
        while frame is not None:
            yield frame
            ok, frame = self.capture.read()
            frame = frame if ok else None

    def close(self) -> None:
        self.capture.release()


class FrameReader:
    """A thread that decodes frames, converts them and runs the detector on every ``detect_every``-th one."""

    def __init__(self, source: VideoSource, detector: FaceDetector, detect_every: int) -> None:
        self.source, self.detector, self.detect_every = source, detector, detect_every
        self.queue: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.frames_read = 0
        self.thread = threading.Thread(target=self._run, name="lrfer-video-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cv2 = import_cv2()
        start = time.monotonic()
        try:
            for index, bgr in enumerate(self.source.read()):
                if self.stop.is_set():
                    break
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                t = time.monotonic() - start if self.source.live else index / self.source.fps
                boxes = self.detector.detect(rgb)[0] if index % self.detect_every == 0 else None
                self.frames_read = index + 1
                self._put(Frame(index, t, bgr, rgb, grey, boxes))
        except BaseException as err:
            self.error = err
        finally:
            self._put(None)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def chunks(self, size: int, stop: Callable[[], bool] = lambda: False) -> Iterator[list[Frame]]:
        """Lists of up to ``size`` frames: whatever is decoded, waiting for at least one; ends early once
        ``stop()`` is true (checked while waiting too, so a camera that sends nothing cannot hold it)."""
        while True:
            try:
                item = self.queue.get(timeout=STOP_POLL_S)
            except queue.Empty:
                if stop():
                    return
                continue
            if stop():
                return
            chunk = []
            while item is not None:
                chunk.append(item)
                if len(chunk) >= size:
                    break
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if chunk:
                yield chunk
            if item is None:
                if self.error is not None:
                    raise self.error
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


@dataclass
class FaceRow:
    """One face on one frame: its track, box, crop side, factor, raw and smoothed probabilities."""

    track: Track
    box: np.ndarray
    detected: bool
    crop_px: int = 0
    factor: float = 1.0
    raw: np.ndarray | None = None
    smoothed: np.ndarray | None = None


@dataclass
class TrackingStats:
    frames: int = 0
    kept: int = 0
    dropped: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    frames_expected: int | None = None


def smoothing_weight(dt: float, half_life: float) -> float:
    """The EMA's weight of a new observation ``dt`` seconds after the last: 1 - 0.5 ** (dt / half_life)."""
    if half_life <= 0:
        return 1.0
    return 1.0 - 0.5 ** (max(dt, 0.0) / half_life)


def track_video(
    source: VideoSource,
    detector: FaceDetector,
    classifier: FaceClassifier,
    options: VideoOptions,
    emit: Callable[[Frame, list[FaceRow]], None],
    progress: Callable[[int], None] | None = None,
) -> TrackingStats:
    """Run the video through detection, tracking, classification and smoothing.

    ``emit(frame, rows)`` receives every frame in order with the faces of kept tracks on it (each track's
    ``state["id"]`` is its number, 1, 2, ...); ``progress(n)`` is told of every n frames processed.
    Ctrl-C stops reading where the chunk being processed ends and the frames read so far are written out
    (``stats.interrupted``); a second Ctrl-C stops reading at once.
    """
    reader = FrameReader(source, detector, options.detect_every)
    tracker = FaceTracker(options.tracker)
    pending: deque[tuple[Frame, list[FaceRow]]] = deque()
    stats = TrackingStats(frames_expected=source.frame_count)
    ids = iter(range(1, 1 << 62))
    started = time.monotonic()
    with DeferredSignal(signal.SIGINT).installed() as ctrl_c:
        try:
            for chunk in reader.chunks(options.chunk, ctrl_c.is_requested):
                framed: list[tuple[Frame, list[FaceRow]]] = []
                for frame in chunk:
                    tracks, _ = tracker.step(frame.index, frame.grey, frame.detections)
                    detected = frame.detections is not None
                    rows = [FaceRow(t, t.box.copy(), detected and t.last_hit == frame.index) for t in tracks]
                    framed.append((frame, rows))
                _classify(framed, classifier, options)
                for frame, rows in framed:
                    for row in rows:
                        _smooth(row, frame.time, options.smooth)
                    frame.rgb = frame.grey = None  # a frame waiting to be written keeps only what is drawn on
                    pending.append((frame, rows))
                _release(pending, options.tracker, emit, ids, stats)
                if progress is not None:
                    progress(len(chunk))
            stats.interrupted = ctrl_c.requested
        except KeyboardInterrupt:  # a second Ctrl-C: stop reading now
            stats.interrupted = True
        finally:
            reader.close()
            stats.seconds = time.monotonic() - started
        tracker.finish()
        _release(pending, options.tracker, emit, ids, stats, final=True)
    return stats


def _classify(
    framed: list[tuple[Frame, list[FaceRow]]], classifier: FaceClassifier, options: VideoOptions
) -> None:
    """Classify every face of the chunk's frames in one batched call."""
    crops, order = [], []
    for frame, rows in framed:
        if rows:
            frame_crops, sides = face_crops(frame.rgb, np.stack([r.box for r in rows]), options.margin)
            crops += frame_crops
            for row, side in zip(rows, sides):
                row.crop_px = side
                order.append(row)
    if not crops:
        return
    probs, factors = classifier.classify(crops, options.batch_size)
    for row, p, f in zip(order, probs.numpy(), factors.numpy()):
        row.raw, row.factor = p.astype(np.float64), float(f)


def _smooth(row: FaceRow, t: float, half_life: float) -> None:
    state = row.track.state
    if "p" not in state:
        state["p"] = row.raw.copy()
    else:
        state["p"] = state["p"] + smoothing_weight(t - state["t"], half_life) * (row.raw - state["p"])
    state["t"] = t
    row.smoothed = state["p"].copy()


def _release(pending, cfg: TrackerConfig, emit, ids, stats: TrackingStats, final: bool = False) -> None:
    """Emit the frames at the head of ``pending`` whose every face is decided (kept or dropped)."""
    while pending:
        frame, rows = pending[0]
        kept = []
        for row in rows:
            track = row.track
            confirmed = track.confirmed(cfg)
            if confirmed and frame.index <= track.last_seen:
                kept.append(row)
            elif not (track.ended or final):
                return  # this face is not decided yet: neither is any later frame
            elif not confirmed and not track.state.get("counted"):
                track.state["counted"] = True
                stats.dropped += 1
        pending.popleft()
        for row in kept:
            if "id" not in row.track.state:
                row.track.state["id"] = next(ids)
                stats.kept += 1
        stats.frames += 1  # counted as it reaches the outputs: the summary's count is what they hold
        emit(frame, kept)


# -- lrfer-predict RUN clip.mp4 / --camera INDEX --------
def add_arguments(parser: argparse.ArgumentParser, defaults: VideoOptions | None = None) -> None:
    """lrfer-predict's video options (a video input or ``--camera`` selects the video path), their defaults
    from ``defaults`` (:func:`video_options` when not given)."""
    group = parser.add_argument_group("video (an input ending in .mp4, .avi, .mov, .mkv, ... or --camera)")
    defaults = defaults or video_options()
    tracking = defaults.tracker
    group.add_argument("--camera", type=int, metavar="INDEX", help="read a live camera (Ctrl-C stops)")
    group.add_argument(
        "--detect-every",
        type=int,
        default=defaults.detect_every,
        metavar="N",
        help="detect faces every N frames",
    )
    group.add_argument(
        "--smooth", type=float, default=defaults.smooth, metavar="SECONDS",
        help="half-life of each track's probability smoothing (0: none)",
    )  # fmt: skip
    group.add_argument(
        "--min-track", type=int, default=tracking.min_track, metavar="FRAMES",
        help="tracks whose detections span fewer frames are dropped as false detections",
    )  # fmt: skip
    group.add_argument("--summary", type=Path, help="per-track summary JSON (default: <out>_summary.json)")
    group.add_argument("--timeline", type=Path, help="timeline plot PNG (default: <out>_timeline.png)")
    group.add_argument(
        "--profile", action="store_true",
        help="also run the Haar profile cascades (video uses the frontal one only: 3-4x faster)",
    )  # fmt: skip
    group.add_argument(
        "--threads", type=int, metavar="N",
        help="CPU threads for classification (default: all cores but one, left to decoding and detection)",
    )  # fmt: skip


def wants_video(args: argparse.Namespace) -> bool:
    """Whether ``lrfer-predict``'s inputs select the video path (``--camera``, or a video file)."""
    return args.camera is not None or any(is_video(Path(p)) for p in args.inputs)


def check_arguments(args: argparse.Namespace) -> None:
    if args.camera is not None and args.inputs:
        raise UserError("--camera reads a camera: give no input files with it")
    if args.camera is None and len(args.inputs) != 1:
        raise UserError(f"give one video at a time (got {len(args.inputs)} inputs)")
    if args.detect_every < 1 or args.min_track < 1 or args.smooth < 0 or not math.isfinite(args.smooth):
        raise UserError(
            f"need --detect-every >= 1, --min-track >= 1 and --smooth >= 0, got {args.detect_every}, "
            f"{args.min_track} and {args.smooth}"
        )
    if args.threads is not None and args.threads < 1:
        raise UserError(f"need --threads >= 1, got {args.threads}")
    if args.margin < 0 or args.batch_size < 1:
        raise UserError(f"need --margin >= 0 and --batch-size >= 1, got {args.margin} and {args.batch_size}")
    outputs = output_paths(args)
    named = [p.resolve() for p in outputs.values() if p is not None]
    if len(set(named)) != len(named):
        raise UserError("--out, --summary, --timeline and --annotate must be different files")
    if args.inputs and Path(args.inputs[0]).resolve() in named:
        raise UserError(f"an output would overwrite the input video {args.inputs[0]}")
    if args.inputs:  # a video that cannot be decoded is told before the run is loaded
        VideoSource(Path(args.inputs[0])).close()


def output_paths(args: argparse.Namespace) -> dict[str, Path | None]:
    out = Path(args.out)
    return {
        "csv": out,
        "summary": args.summary or out.with_name(f"{out.stem}_summary.json"),
        "timeline": args.timeline or out.with_name(f"{out.stem}_timeline.png"),
        "video": args.annotate,
    }


def detector_and_options(args: argparse.Namespace) -> tuple[FaceDetector, VideoOptions]:
    """The face detector and the tracking options the command line asks for."""
    detector = build_detector(
        detector_config(
            model=args.detector_model, min_face=args.min_face, margin=args.margin, profile=args.profile
        )
    )
    options = video_options(
        detect_every=args.detect_every, smooth=args.smooth, margin=args.margin,
        tracker={"min_track": args.min_track}, batch_size=args.batch_size,
    )  # fmt: skip
    return detector, options


def video_summary(
    source: VideoSource,
    stats: TrackingStats,
    options: VideoOptions,
    tracks: list,
    truncated: bool,
    names: list[str],
) -> dict:
    """The ``summary.json`` of a video: the input, what was processed, the tracks found."""
    fps = stats.frames / stats.seconds if stats.seconds > 0 else 0.0
    summary = {
        "input": source.name,
        "frames": stats.frames,
        "fps": source.fps,
        "duration_s": round(stats.frames / source.fps, 3) if not source.live else round(stats.seconds, 3),
        "width": source.width,
        "height": source.height,
        "processed_fps": round(fps, 2),
        "detect_every": options.detect_every,
        "smooth_s": options.smooth,
        "min_track": options.tracker.min_track,
        "no_face": not tracks,
        "tracks": tracks,
        "dropped_tracks": stats.dropped,
        "interrupted": stats.interrupted,
        "truncated": truncated,
        "class_names": names,
    }
    if not tracks:
        summary["message"] = f"no face found in {stats.frames} frames"
    return summary


def predict_video(
    args: argparse.Namespace, classifier: FaceClassifier, say=None, progress: bool | None = None
) -> str:
    """``lrfer-predict RUN clip.mp4`` / ``--camera INDEX``: track and classify every face, write the outputs.

    ``say`` receives warnings (a truncated file); returns the one-line summary. ``progress``: show tqdm's bar
    (None: when stderr is a terminal).
    """
    from tqdm import tqdm

    say = say or log.warning
    detector, options = detector_and_options(args)
    source = VideoSource(args.camera if args.camera is not None else Path(args.inputs[0]))
    threads = torch.get_num_threads()
    if classifier.device.type == "cpu":
        # decoding, detection and encoding need a core: torch threads spin-waiting on a busy one are slow
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
    paths = output_paths(args)
    names = classifier.class_names
    partial = vo.PartialFiles()
    try:
        table = vo.FaceTable(partial.reserve(paths["csv"]), names)
        summary_tmp, timeline_tmp = partial.reserve(paths["summary"]), partial.reserve(paths["timeline"])
        video = None
        if paths["video"] is not None:
            video = vo.AnnotatedVideo(
                partial.reserve(paths["video"]),
                paths["video"],
                source.fps,
                (source.width, source.height),
                names,
            )

        def emit(frame: Frame, rows: list[FaceRow]) -> None:
            for r in rows:
                number = r.track.state["id"]
                table.add(
                    frame.index, frame.time, number, r.box, r.crop_px, r.factor, r.detected, r.smoothed, r.raw
                )
            if video is not None:
                video.add(frame.bgr, [(r.track.state["id"], r.box, r.smoothed) for r in rows])

        disable = None if progress is None else not progress  # None: tqdm shows it on a terminal only
        name = Path(source.name).name
        with tqdm(
            total=source.frame_count, unit="frame", desc=name, disable=disable, dynamic_ncols=True
        ) as bar:
            stats = track_video(source, detector, classifier, options, emit, bar.update)
        table.close()
        if video is not None:
            video.close()
        truncated = (
            not stats.interrupted
            and stats.frames_expected is not None
            and stats.frames < (1 - TRUNCATED_SHARE) * stats.frames_expected
        )
        if truncated:
            say(
                f"{source.name}: decoding stopped after {stats.frames} of {stats.frames_expected} frames "
                "(file truncated or damaged); the outputs cover the frames decoded"
            )
        tracks = vo.summarise(table.tracks, names)
        fps = stats.frames / stats.seconds if stats.seconds > 0 else 0.0
        summary = video_summary(source, stats, options, tracks, truncated, names)
        vo.write_summary(summary_tmp, summary)
        vo.plot_timeline(timeline_tmp, table.tracks, names, f"{Path(source.name).name}: expression per track")
        partial.commit()
    except BaseException:
        partial.discard()
        raise
    finally:
        source.close()
        torch.set_num_threads(threads)
    written = ", ".join(str(p) for p in paths.values() if p is not None)
    found = f"{len(tracks)} face track{'' if len(tracks) == 1 else 's'}" if tracks else "no face"
    stopped = " (stopped by Ctrl-C)" if stats.interrupted else ""
    return (
        f"{found} in {stats.frames} frames{stopped}, {stats.dropped} short tracks dropped, "
        f"{fps:.1f} frames/s -> {written}"
    )
