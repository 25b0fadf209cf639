"""Faces followed from frame to frame: a small IoU / centre-distance tracker, template matching in between.

The detector runs every ``detect_every`` frames (:mod:`lrfer.tools.video`); on the frames in between each
track's face is found again by template matching (``cv2.matchTemplate``, normalised cross-correlation of the
grey face as last detected, searched in a window around the track's box). On a detection frame the detections
are matched to the tracks greedily, best pair first: a pair qualifies when its boxes overlap by IoU >=
``iou`` or their centres lie within ``centre`` face heights of each other, and it scores ``IoU - centre
distance / height``. A matched track takes the detector's box (and a fresh template); a detection that
matches no track starts one; a track that misses more than ``max_missed`` detection rounds in a row ends.

A track's *span* is the frames from its first to its last matched detection: a false box that the detector
fires once has a span of one frame, a face a span as long as it stays in view. :class:`Track` keeps what the
caller needs to drop short tracks (``span < min_track``) and the frames a track coasted through after it was
last seen (detected, or found by its template); where the template is not found, the box moves on at the
velocity measured between the track's last two detections.

Why not a tracker library: ``norfair`` pins ``numpy<2`` and needs the unmaintained ``filterpy``;
``supervision``'s ByteTrack brings PyAV (a bundled FFmpeg), ``requests``, ``pydeprecate`` and more for a
Kalman filter tuned for a detection on every frame, while faces here are detected every few frames and
followed by their appearance in between. This module is ~150 lines on numpy and OpenCV, both already needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from omegaconf import MISSING

from lrfer.detect.detectors import box_iou, import_cv2


@dataclass
class TrackerConfig:
    """How detections become tracks (``--min-track`` etc. in ``lrfer-predict``): types only; the values are
    ``configs/video/default.yaml`` ``tracker`` (:func:`lrfer.tools.video.video_options`).

    ``iou`` / ``centre``: a detection continues a track when their boxes overlap by IoU >= ``iou`` or their
    centres are within ``centre`` face heights. ``max_missed``: detection rounds a track may miss in a row
    before it ends (then its velocity is forgotten after each miss). ``min_track``: tracks whose detections
    span fewer frames are false detections, and so are tracks detected in fewer than ``min_hit_rate`` of the
    detection rounds of their span (a box the detector fires on now and then). ``search``: the
    template-matching window reaches this many face sizes beyond the predicted box on every side.
    ``min_match``: below this normalised correlation the face is not found between detections and the box
    moves on at the track's velocity. ``template_px``: faces taller than this are matched on a copy of the
    frame scaled down until they are this tall (matching costs grow with the face's area squared).
    """

    iou: float = MISSING
    centre: float = MISSING
    max_missed: int = MISSING
    min_track: int = MISSING
    min_hit_rate: float = MISSING
    search: float = MISSING
    min_match: float = MISSING
    template_px: int = MISSING


@dataclass
class Track:
    """One face followed over time. ``box`` is ``[left, top, width, height]`` in px of the frame."""

    id: int
    box: np.ndarray
    first_hit: int
    last_hit: int
    template: np.ndarray | None = None
    offset: tuple[int, int] = (0, 0)  # where the template starts inside the box (it is clipped to the frame)
    scale: float = 1.0  # the template is the face scaled by this
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # px per frame, between detections
    last_seen: int = -1  # the last frame it was detected or found by its template
    missed: int = 0
    hits: int = 1  # detections matched
    rounds: int = 1  # detection rounds from the first to the last matched detection
    rounds_alive: int = 1
    is_confirmed: bool = False
    ended: bool = False
    state: dict = field(default_factory=dict)  # the caller's per-track data (smoothed probabilities, ...)

    def __post_init__(self) -> None:
        self.last_seen = max(self.last_seen, self.last_hit)
        self.hit_box = self.box.copy()

    @property
    def span(self) -> int:
        """Frames from the first to the last matched detection, both included."""
        return self.last_hit - self.first_hit + 1

    def confirmed(self, cfg: TrackerConfig) -> bool:
        """A face, not a false detection: a long enough span, detected often enough within it (once
        confirmed, a track stays confirmed)."""
        if not self.is_confirmed:
            self.is_confirmed = self.span >= cfg.min_track and self.hits >= cfg.min_hit_rate * self.rounds
        return self.is_confirmed


class FaceTracker:
    """Tracks faces over a frame sequence: call :meth:`step` once per frame, in order."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self.cv2 = import_cv2()
        self.active: list[Track] = []
        self.next_id = 0

    def step(
        self, index: int, grey: np.ndarray, detections: np.ndarray | None
    ) -> tuple[list[Track], list[Track]]:
        """Go to frame ``index`` (grey uint8 (H, W)); ``detections``: (N, 4) boxes, None between detections.

        Returns the tracks in view on this frame (their ``box`` set for it) and the tracks that ended here.
        """
        for track in self.active:
            self._follow(track, grey, index)
        ended: list[Track] = []
        if detections is not None:
            detections = np.asarray(detections, np.float64).reshape(-1, 4)
            for track in self.active:
                track.rounds_alive += 1
            pairs = self._match([t.box for t in self.active], detections)
            matched_tracks = {t for t, _ in pairs}
            matched_dets = {d for _, d in pairs}
            for t, d in pairs:
                track = self.active[t]
                box = detections[d].copy()
                if index > track.last_hit:
                    track.velocity = (box[:2] - track.hit_box[:2]) / (index - track.last_hit)
                track.box, track.hit_box, track.missed = box, box.copy(), 0
                track.last_hit = track.last_seen = index
                track.hits, track.rounds = track.hits + 1, track.rounds_alive
                track.template, track.offset, track.scale = self._template(grey, box)
            for t, track in enumerate(self.active):
                if t not in matched_tracks:
                    track.missed += 1
                    track.velocity = np.zeros(2)
                    if track.missed > self.cfg.max_missed:
                        track.ended = True
                        ended.append(track)
            for d, box in enumerate(detections):
                if d not in matched_dets:
                    template, offset, scale = self._template(grey, box)
                    self.active.append(Track(self.next_id, box.copy(), index, index, template, offset, scale))
                    self.next_id += 1
            self.active = [t for t in self.active if not t.ended]
        return list(self.active), ended

    def finish(self) -> list[Track]:
        """End every track (the video is over); returns them."""
        for track in self.active:
            track.ended = True
        ended, self.active = self.active, []
        return ended

    def _match(self, boxes: list[np.ndarray], detections: np.ndarray) -> list[tuple[int, int]]:
        """Greedy one-to-one matching of track boxes to detections, best qualifying pair first."""
        if not boxes or not len(detections):
            return []
        tracks = np.stack(boxes)
        iou = box_iou(tracks, detections)
        centres_t = tracks[:, :2] + tracks[:, 2:] / 2
        centres_d = detections[:, :2] + detections[:, 2:] / 2
        height = np.maximum(tracks[:, None, 3], 1e-6)
        distance = np.linalg.norm(centres_t[:, None] - centres_d[None], axis=-1) / height
        score = np.where((iou >= self.cfg.iou) | (distance <= self.cfg.centre), iou - distance, -np.inf)
        pairs: list[tuple[int, int]] = []
        while np.isfinite(score).any():
            t, d = np.unravel_index(int(np.argmax(score)), score.shape)
            pairs.append((int(t), int(d)))
            score[t, :], score[:, d] = -np.inf, -np.inf
        return pairs

    def _follow(self, track: Track, grey: np.ndarray, index: int) -> None:
        """Move the track's box to where its template matches best near where its velocity takes it; where
        nothing matches, the box moves on at that velocity."""
        template = track.template
        track.box = track.box + np.array([*track.velocity, 0.0, 0.0])
        if template is None or min(template.shape) < 4:
            return
        x, y, w, h = track.box
        reach = self.cfg.search * max(w, h)
        height, width = grey.shape
        left, top = int(max(0, np.floor(x - reach))), int(max(0, np.floor(y - reach)))
        right, bottom = int(min(width, np.ceil(x + w + reach))), int(min(height, np.ceil(y + h + reach)))
        window = grey[top:bottom, left:right]
        if track.scale < 1:
            window = self.cv2.resize(
                window, None, fx=track.scale, fy=track.scale, interpolation=self.cv2.INTER_AREA
            )
        th, tw = template.shape
        if window.shape[0] < th or window.shape[1] < tw:
            return
        scores = self.cv2.matchTemplate(window, template, self.cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = self.cv2.minMaxLoc(scores)
        if best >= self.cfg.min_match:
            dx, dy = track.offset
            track.box = np.array(
                [left + bx / track.scale - dx, top + by / track.scale - dy, w, h], np.float64
            )
            track.last_seen = index

    def _template(self, grey: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int], float]:
        """The face's grey pixels (scaled down to ``template_px`` tall at most), where they start in the box,
        and the scale."""
        template, offset = _crop(grey, box)
        scale = min(1.0, self.cfg.template_px / max(1.0, float(box[3])))
        if scale < 1 and min(template.shape) > 0:
            template = self.cv2.resize(template, None, fx=scale, fy=scale, interpolation=self.cv2.INTER_AREA)
        return template, offset, scale


def _crop(grey: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The grey pixels under ``box`` clipped to the frame (a contiguous copy), and where they start in it."""
    height, width = grey.shape
    x, y, w, h = (round(float(v)) for v in box)
    left, top = max(0, x), max(0, y)
    right, bottom = min(width, x + w), min(height, y + h)
    return np.ascontiguousarray(grey[top : max(top, bottom), left : max(left, right)]), (left - x, top - y)
