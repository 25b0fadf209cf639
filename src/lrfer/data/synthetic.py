"""Procedurally drawn synthetic face-expression images, for tests, CI and quick starts without a dataset.

:func:`make_synthetic_faces` draws cartoon faces with torch ops on coordinate grids (soft masks from
approximate signed distances, anti-aliased over one to a few pixels), vectorised over chunks of a few
hundred images with no per-image Python loop, so 10,000 faces of 100x100 take a few seconds on a CPU.
Shapes are defined in normalised coordinates, so any image size (32 to 256 px and beyond) shows the same
faces, and every random choice comes from one ``torch.Generator`` seeded with ``seed``: the same
arguments give bit-identical tensors.

What varies (scaled by the knobs of :class:`SyntheticDifficulty`):

* identity: face width, height and jaw taper, skin tone, eye spacing/size/height, iris colour, eyebrow
  thickness/length/density, nose and mouth position, lip thickness and colour, hair colour, hairline,
  hair style (short, long, buzz-cut), ears, neck, shirt colour, cheek blush;
* pose: in-plane rotation, translation and scale of the whole head; the face fills the frame (hair, ears
  and chin at the borders), as in the aligned crops of RAF-DB and its kin;
* lighting: ambient level, a linear brightness gradient of random direction and strength, a colour cast;
* background: base colour with a vertical gradient, soft- or sharp-edged rectangles and (sometimes)
  tilted stripes (all separable terms, so the whole background is one batched matrix product);
* sharpness: edges are soft over 1 to ``max_edge_softness_px`` pixels of a 100 px face (scaled with the
  image size), per face (some faces come from sharper photos than others), so thin creases are crisp on
  some faces and faint on others;
* pixel noise: Gaussian luminance noise of random strength (cut at random offsets from a small bank of
  noise fields drawn per call, which is much faster than fresh noise for every image);
* expression intensity: a face shows its class's cues at a random intensity in ``[min_cue_strength, 1]``
  (interpolating from the neutral face) plus per-cue jitter, so weak examples are genuinely ambiguous
  (a faint frown is close to neutral) and accuracy stays below 100% even at full resolution.

Expression cues come at two scales, so that resolution matters as it does on real faces. The *coarse*
cue is the mouth, a large dark/bright shape that survives downsampling to ~12 px; the *fine* cues are
eyebrow height/tilt/arch/weight, eye openness and thin creases (about 1 px wide at 100 px, gone at ~12 px):

==========  ===================================  ===============================================
class       mouth (coarse)                       fine cues
==========  ===================================  ===============================================
surprise    tall open "O"                        brows raised high and arched, eyes wide,
                                                 forehead lines
fear        stretched wide, teeth showing        brows raised, inner ends up, eyes wide
disgust     upper lip raised over upper teeth,   brows lowered, eyes narrowed, nose-bridge
            corners down                         wrinkles
happiness   wide open smile, upper teeth         eyes narrowed (cheeks raised)
sadness     closed, corners well down            inner brow ends raised, eyelids drooping
anger       closed, pressed and short            brows lowered, knitted and heavy, inner ends
                                                 down, vertical frown lines
neutral     closed flat line                     -
==========  ===================================  ===============================================

Every class has its own mouth, but a fraction ``coarse_swap`` of the faces shows the mouth of its class's
:data:`COARSE_PARTNER` (fear with surprise's "O", anger with disgust's mouth, sadness with a neutral one,
...), the confusions of real faces: on those faces only the fine cues tell the class. So a classifier of
~12 px faces is right on most faces but not on these, while at full resolution all seven classes are
separable, up to the weak-intensity examples. The knobs are calibrated so that a ResNet-18 trained with
the quick recipe loses accuracy with resolution as on RAF-DB (``scripts/calibrate_synthetic.py``, README
"The synthetic faces"); :data:`GENERATOR_VERSION` names the calibration. The cue table is
:data:`CUE_TABLE`, as overrides of :data:`NEUTRAL_EXPRESSION`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

__all__ = [
    "COARSE_PARTNER",
    "CUE_TABLE",
    "EXPRESSIONS",
    "GENERATOR_VERSION",
    "MOUTH_KEYS",
    "NEUTRAL_EXPRESSION",
    "SyntheticDifficulty",
    "make_synthetic_faces",
]

#: Version of the generator's look: raised whenever a change alters the faces drawn from a seed. Recorded in
#: the dataset cache key and in every run's ``metrics.json`` (``dataset_info``), so results drawn from
#: different generators are never mixed up. 1: the first generator (cues calibrated at 64 px by eye);
#: 2: per-class mouths, partner swaps and per-face sharpness, a first calibration to RAF-DB's loss of accuracy
#: with resolution; 3: fewer swapped mouths (0.15) and softer edges (up to 10 px), the calibrated one
#: (``scripts/calibrate_synthetic.py``, README "The synthetic faces").
GENERATOR_VERSION = 3

#: Smallest supported image side (below it the face has no room for features at all).
MIN_IMAGE_SIZE = 16
#: Images x pixels per vectorised chunk; chunks are rendered in parallel, one per worker thread.
CHUNK_PIXELS = 2**22
#: Width of the anti-aliasing ramp of shape edges, in pixels, of the sharpest faces.
EDGE_SOFTNESS_PX = 1.0
#: Image side at which ``SyntheticDifficulty.max_edge_softness_px`` is given (RAF-DB's source size, where the
#: generator is calibrated); other sizes scale the softness with the side (at least EDGE_SOFTNESS_PX), so a
#: face is as sharp, relative to its size, at 64 px as at 100 px.
SOFTNESS_REFERENCE_SIZE = 100
#: Noise fields per call; each has NOISE_BANK_MARGIN rows more than an image, which starts at a random
#: offset into it (row and column: windows wrap along rows).
NOISE_BANK_SIZE = 64
NOISE_BANK_MARGIN = 16
#: Forehead lines (surprise): count, spacing, and distance of the lowest one above the brows.
NUM_FOREHEAD_LINES = 3
FOREHEAD_LINE_SPACING = 0.045
FOREHEAD_LINE_OFFSET = 0.065
#: Nose-bridge wrinkles (disgust): count and spacing.
NUM_NOSE_WRINKLES = 3
NOSE_WRINKLE_SPACING = 0.032
#: Darker border of the face: starts at this squared normalised radius, with this opacity at the edge.
EDGE_SHADE_START = 0.55
EDGE_SHADE_OPACITY = 0.6


@dataclass(frozen=True)
class SyntheticDifficulty:
    """Knobs of the nuisance variation; the defaults give the intended difficulty (see module docstring).

    Distances are in normalised image coordinates (the image spans [-1, 1]), colours in [0, 1].
    """

    #: In-plane head rotation, uniform in +-max_rotation_deg.
    max_rotation_deg: float = 12.0
    #: Head translation, uniform in +-max_translation along each axis.
    max_translation: float = 0.06
    #: Head scale, uniform in [min_scale, max_scale] (1 = the face fills the image height).
    min_scale: float = 1.3
    max_scale: float = 1.5
    #: Ambient brightness factor, uniform in [min_ambient, max_ambient].
    min_ambient: float = 0.7
    max_ambient: float = 1.15
    #: Largest relative brightness change per unit distance of the linear lighting gradient.
    light_gradient: float = 0.3
    #: Largest per-channel colour cast (multiplicative, +-).
    color_cast: float = 0.08
    #: Number of random rectangles (soft- or sharp-edged) cluttering the background.
    background_blobs: int = 4
    #: Opacity scale of background rectangles and stripes (0 = plain background).
    clutter_contrast: float = 0.6
    #: Probability that a background has stripes.
    stripe_probability: float = 0.4
    #: Largest standard deviation of the Gaussian luminance noise (per image, uniform in [30%, 100%]).
    noise_std: float = 0.04
    #: Scale of all identity variation (face shape, feature placement, colours); 0 = one identity.
    identity_variation: float = 1.0
    #: Expression intensity is uniform in [min_cue_strength, 1]; low values look close to neutral.
    min_cue_strength: float = 0.4
    #: Scale of the per-cue jitter (standard deviations in :data:`CUE_JITTER`).
    cue_jitter: float = 1.3
    #: Edges are soft over a width uniform in [EDGE_SOFTNESS_PX, max_edge_softness_px] pixels per face: some
    #: faces come from sharper photos than others (as in-the-wild datasets resize faces of every size).
    #: Pixels at SOFTNESS_REFERENCE_SIZE (100 px); other image sizes scale them (at least 1 px).
    max_edge_softness_px: float = 10.0
    #: Probability that a face shows the mouth of its class's :data:`COARSE_PARTNER` instead of its own
    #: (its fine cues stay its class's): the coarse cue then misleads, only the fine cues tell.
    coarse_swap: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError("SyntheticDifficulty needs 0 < min_scale <= max_scale.")
        if not 0 <= self.coarse_swap <= 1:
            raise ValueError("SyntheticDifficulty.coarse_swap must lie in [0, 1].")
        if not 0 <= self.min_cue_strength <= 1:
            raise ValueError("SyntheticDifficulty.min_cue_strength must lie in [0, 1].")
        if self.background_blobs < 0:
            raise ValueError("SyntheticDifficulty.background_blobs must be >= 0.")


#: Expression parameters of the neutral face. Distances are in face units (the face is ~1.2 wide).
NEUTRAL_EXPRESSION: dict[str, float] = {
    "mouth_width": 0.17,  # half-width of the mouth
    "mouth_curve": 0.0,  # lift of the mouth corners (+ smile, - frown)
    "mouth_open_up": 0.0,  # opening above the lip line at the centre
    "mouth_open_lo": 0.0,  # opening below the lip line at the centre
    "teeth_up": 0.0,  # fraction of the opening filled by upper teeth
    "teeth_lo": 0.0,  # fraction of the opening filled by lower teeth
    "brow_raise": 0.0,  # eyebrows moved up (+) or down (-)
    "brow_tilt": 0.0,  # inner brow ends up (+) or down (-), relative to the outer ends
    "brow_arch": 0.012,  # arch of the brows (centre above the ends)
    "brow_weight": 1.0,  # brow thickness relative to the identity's (knitted brows look heavier)
    "eye_open": 1.0,  # eye opening relative to the identity's neutral eye
    "forehead_lines": 0.0,  # opacity of horizontal forehead lines
    "nose_wrinkles": 0.0,  # opacity of horizontal nose-bridge wrinkles
    "glabella_lines": 0.0,  # opacity of vertical lines between the brows
}


#: Per-class expression prototypes: overrides of :data:`NEUTRAL_EXPRESSION` (see module docstring).
CUE_TABLE: dict[str, dict[str, float]] = {
    "surprise": {
        "mouth_width": 0.1,
        "mouth_open_up": 0.1,
        "mouth_open_lo": 0.13,
        "brow_raise": 0.1,
        "brow_arch": 0.045,
        "eye_open": 1.8,
        "forehead_lines": 1.0,
    },
    "fear": {
        "mouth_width": 0.2,
        "mouth_curve": -0.02,
        "mouth_open_up": 0.03,
        "mouth_open_lo": 0.06,
        "teeth_up": 0.3,
        "teeth_lo": 0.5,
        "brow_raise": 0.05,
        "brow_tilt": 0.07,
        "brow_arch": -0.01,
        "eye_open": 1.7,
    },
    "disgust": {
        "mouth_width": 0.14,
        "mouth_curve": -0.05,
        "mouth_open_up": 0.045,
        "mouth_open_lo": 0.005,
        "teeth_up": 0.6,
        "brow_raise": -0.03,
        "brow_tilt": -0.015,
        "eye_open": 0.5,
        "nose_wrinkles": 1.0,
    },
    "happiness": {
        "mouth_width": 0.23,
        "mouth_curve": 0.085,
        "mouth_open_up": 0.01,
        "mouth_open_lo": 0.095,
        "teeth_up": 0.4,
        "eye_open": 0.7,
    },
    "sadness": {
        "mouth_width": 0.15,
        "mouth_curve": -0.12,
        "brow_raise": 0.02,
        "brow_tilt": 0.09,
        "brow_arch": 0.0,
        "eye_open": 0.65,
    },
    "anger": {
        "mouth_width": 0.12,
        "mouth_curve": -0.03,
        "brow_raise": -0.07,
        "brow_tilt": -0.08,
        "brow_arch": 0.0,
        "brow_weight": 1.6,
        "eye_open": 0.95,
        "glabella_lines": 1.0,
    },
    "neutral": {},
}

#: The expression parameters of the mouth, the coarse cue (the one that survives to ~12 px).
MOUTH_KEYS = ("mouth_width", "mouth_curve", "mouth_open_up", "mouth_open_lo", "teeth_up", "teeth_lo")
#: Whose mouth a face shows when its coarse cue is swapped (``SyntheticDifficulty.coarse_swap``): the
#: confusions of real faces (fear looks surprised, anger disgusted, sadness neutral, ...).
COARSE_PARTNER: dict[str, str] = {
    "surprise": "fear",
    "fear": "surprise",
    "disgust": "anger",
    "happiness": "happiness",
    "sadness": "neutral",
    "anger": "disgust",
    "neutral": "sadness",
}

#: The expressions the generator can draw, in the order of :data:`CUE_TABLE` (RAF-DB's label order): the
#: classes of :func:`make_synthetic_faces` unless it is given its own (the synthetic dataset passes its
#: ``dataset.class_names``, the one place its class names live).
EXPRESSIONS: tuple[str, ...] = tuple(CUE_TABLE)

#: Standard deviation of the per-sample jitter of each expression parameter (times ``cue_jitter``).
CUE_JITTER: dict[str, float] = {
    "mouth_width": 0.015,
    "mouth_curve": 0.012,
    "mouth_open_up": 0.008,
    "mouth_open_lo": 0.008,
    "teeth_up": 0.05,
    "teeth_lo": 0.05,
    "brow_raise": 0.012,
    "brow_tilt": 0.01,
    "brow_arch": 0.008,
    "brow_weight": 0.1,
    "eye_open": 0.08,
    "forehead_lines": 0.1,
    "nose_wrinkles": 0.1,
    "glabella_lines": 0.1,
}

# Identity parameters: name -> (centre, half-range); drawn uniformly, the half-range scaled by
# identity_variation. Positions are in face units around a face centred at (0, face_cy).
_IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.60, 0.06),  # half-width of the face
    "face_h": (0.78, 0.05),  # half-height of the face
    "face_cy": (0.06, 0.02),
    "jaw": (0.22, 0.1),  # narrowing of the face towards the chin
    "eye_y": (-0.10, 0.03),
    "eye_dx": (0.24, 0.03),  # horizontal distance of each eye from the centre
    "eye_w": (0.085, 0.01),  # eye half-width
    "eye_h": (0.034, 0.005),  # eye half-height when neutral
    "iris_r": (0.037, 0.004),
    "brow_gap": (0.115, 0.02),  # brow centre above the eye centre
    "brow_dx": (0.012, 0.012),  # brow centre outside the eye centre
    "brow_len": (0.105, 0.015),  # brow half-length
    "brow_th": (0.019, 0.005),  # brow half-thickness
    "brow_alpha": (0.88, 0.12),
    "nose_len": (0.27, 0.03),  # eye line to nostrils
    "nostril_dx": (0.042, 0.008),
    "mouth_gap": (0.19, 0.03),  # nostrils to mouth line
    "lip_t": (0.022, 0.007),  # lip thickness
    "hairline": (-0.62, 0.06),
    "hair_side": (0.4, 0.15),  # how far the hair comes down at the temples
    "neck_w": (0.2, 0.03),
    "blush": (0.12, 0.12),
    "skin_tone": (0.5, 0.5),  # 0 = light, 1 = dark
}
_SKIN_LIGHT = (0.96, 0.80, 0.69)
_SKIN_DARK = (0.36, 0.23, 0.16)
_SKIN_JITTER = 0.03
_HAIR_PALETTE = (
    (0.07, 0.05, 0.04),
    (0.22, 0.13, 0.07),
    (0.40, 0.24, 0.12),
    (0.75, 0.58, 0.35),
    (0.55, 0.20, 0.08),
    (0.60, 0.60, 0.60),
)
_IRIS_PALETTE = ((0.25, 0.14, 0.07), (0.12, 0.07, 0.04), (0.25, 0.4, 0.6), (0.3, 0.45, 0.25))
_SHIRT_PALETTE = (
    (0.25, 0.35, 0.6),
    (0.8, 0.8, 0.8),
    (0.1, 0.1, 0.12),
    (0.7, 0.2, 0.2),
    (0.2, 0.55, 0.3),
    (0.85, 0.7, 0.2),
    (0.5, 0.3, 0.6),
)
_PALETTE_JITTER = 0.04  # (palettes: the first entry is the one of identity_variation=0)
_MIN_NOISE_FRACTION = 0.3  # noise std is uniform in [this, 1] x noise_std
# Background: channel levels, vertical gradient (+-), rectangle centres (+-), half-sizes, edge
# sharpness (1 / edge width in half-sizes), opacity (x clutter_contrast), stripe amplitude and frequency.
_BACKGROUND_LEVEL = (0.1, 0.9)
_BACKGROUND_GRADIENT = 0.2
_BLOB_REACH = 1.2
_BLOB_HALF_SIZE = (0.08, 0.5)
_BLOB_EDGE = (2.0, 30.0)
_MIN_BLOB_OPACITY = 0.3
_STRIPE_AMPLITUDE = 0.5
_STRIPE_FREQUENCY = (5.0, 25.0)  # radians per unit length
_LONG_HAIR_PROBABILITY = 0.35
_BUZZ_CUT_PROBABILITY = 0.15
_BUZZ_CUT_DENSITY = 0.35
_SCLERA = (0.93, 0.91, 0.88)
_PUPIL = (0.04, 0.04, 0.05)
_MOUTH_INSIDE = (0.28, 0.06, 0.08)
_TEETH = (0.95, 0.93, 0.86)
_LIP_TINT = (0.82, 0.52, 0.52)  # lip colour = skin x tint
_BLUSH_TINT = (1.0, 0.7, 0.7)
# Brightness factors of shading: in wrinkles, at the face's border, under the nose, in the nostrils.
_CREASE_SHADE = 0.5
_EDGE_SHADE = 0.78
_NOSE_SHADE = 0.91
_NOSTRIL_SHADE = 0.4
_LINE_HALF_WIDTH = 0.009  # wrinkle half-thickness
_LID_HALF_WIDTH = 0.009  # eye outline half-thickness (upper lid x1.6)
_MOUTH_LINE_HALF_WIDTH = 0.011  # dark line between closed lips
_PUPIL_FRACTION = 0.45  # pupil radius / iris radius
_LASH_DARKNESS = 0.4  # eye outline colour = hair colour x this
_UPPER_LID_WEIGHT, _LOWER_LID_WEIGHT = 1.6, 0.7  # outline thickness factors
_BROW_TAPER = 0.3  # brow thickness shrinks by this fraction from the inner to the outer end
_BROW_DARKNESS, _BROW_OPACITY = 0.7, 0.9  # brow colour = skin blended towards hair x darkness
_EAR_SHADE = 0.93

# Layout of the head in canonical face units (the image spans [-1, 1]; v points down).
_BOX_PAD = 0.03  # padding of the pixel boxes that hold each shape
_BELOW_IMAGE = 1.6  # the neck and shirt reach at least this far down (out of any image)
_LONG_HAIR_CENTRE_V, _LONG_HAIR_HALF_H, _LONG_HAIR_EXTRA_W = 0.08, 0.98, 0.14
_NECK_TOP = 0.3
_SHIRT_CENTRE_V, _SHIRT_HALF_W, _SHIRT_HALF_H = 1.5, 0.95, 0.6
_EAR_BELOW_EYES, _EAR_INSET, _EAR_HALF_W, _EAR_HALF_H = 0.1, 0.01, 0.06, 0.11
_HAIR_CAP_RAISE, _HAIR_CAP_EXTRA_W, _HAIR_CAP_EXTRA_H = 0.04, 0.06, 0.08  # ellipse holding the hair on top
_BLUSH_BELOW_EYES, _BLUSH_U, _BLUSH_HALF_W, _BLUSH_HALF_H = 0.2, 0.3, 0.1, 0.06
_NOSE_SHADOW_HALF_W, _NOSE_SHADOW_HALF_H = 0.075, 0.035
_NOSTRIL_HALF_W, _NOSTRIL_HALF_H = 0.022, 0.012
_REFERENCE_FACE_W = 0.6  # mouth widths in the cue table are for a face of this half-width
_LIP_CORNER = 0.3  # the lips reach this fraction of their thickness beyond the mouth corners
# Creases: forehead line half-lengths (first, shrink per line) and arch; frown lines (below the brow
# base, half-length, distance from the centre); nose wrinkles (below the eyes, half-lengths, arch).
_FOREHEAD_LINE_LENGTH, _FOREHEAD_LINE_SHRINK, _FOREHEAD_LINE_ARCH = 0.22, 0.03, 0.02
_GLABELLA_BELOW_BROWS, _GLABELLA_HALF_LENGTH, _GLABELLA_U = 0.04, 0.045, 0.03
_NOSE_WRINKLE_BELOW_EYES, _NOSE_WRINKLE_LENGTH = 0.03, 0.055
_NOSE_WRINKLE_GROWTH, _NOSE_WRINKLE_ARCH = 0.008, -0.012
_PRESENT = 0.02  # a crease or teeth amount below this is absent (the layer is skipped when all are)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def _palette_pick(gen: torch.Generator, n: int, palette: tuple, variation: float) -> torch.Tensor:
    """Random palette entries plus jitter, pulled towards the first entry when variation < 1."""
    table = torch.tensor(palette, dtype=torch.float32)
    index = torch.randint(len(palette), (n,), generator=gen)
    picked = table[index] + (torch.rand(n, 3, generator=gen) * 2 - 1) * _PALETTE_JITTER
    return (table[0] + (picked - table[0]) * variation).clamp(0, 1)


def _draw_parameters(
    labels: torch.Tensor, expressions: Sequence[str], difficulty: SyntheticDifficulty, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """All per-image random parameters, drawn up front (shape (N,) or (N, 3) each), in one fixed order
    (identity, expression, pose and lighting, background clutter): the faces depend on it."""
    n = labels.shape[0]
    p = _draw_identity(n, difficulty, gen)
    p.update(_draw_expression(labels, expressions, difficulty, gen))
    p.update(_draw_pose_and_lighting(n, difficulty, gen))
    p.update(_draw_clutter(n, difficulty, gen))
    return p


def _draw_identity(n: int, d: SyntheticDifficulty, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Face shape, skin, hair, eye and shirt colours, hair style."""
    p: dict[str, torch.Tensor] = {}
    for name, (centre, half) in _IDENTITY_RANGES.items():
        p[name] = centre + (torch.rand(n, generator=gen) * 2 - 1) * half * d.identity_variation
    p["skin_tone"] = p["skin_tone"].clamp(0, 1)
    iv = d.identity_variation
    light, dark = torch.tensor(_SKIN_LIGHT), torch.tensor(_SKIN_DARK)
    tone = p["skin_tone"][:, None]
    skin_jitter = (torch.rand(n, 3, generator=gen) * 2 - 1) * _SKIN_JITTER * iv
    p["skin"] = (light + (dark - light) * tone + skin_jitter).clamp(0, 1)
    p["hair"] = _palette_pick(gen, n, _HAIR_PALETTE, iv)
    p["iris"] = _palette_pick(gen, n, _IRIS_PALETTE, iv)
    p["shirt"] = _palette_pick(gen, n, _SHIRT_PALETTE, iv)
    style = torch.rand(n, generator=gen)
    p["long_hair"] = (style < _LONG_HAIR_PROBABILITY * min(iv, 1.0)).float()
    p["hair_density"] = torch.where(style > 1 - _BUZZ_CUT_PROBABILITY * min(iv, 1.0), _BUZZ_CUT_DENSITY, 1.0)
    return p


def _draw_expression(
    labels: torch.Tensor, expressions: Sequence[str], d: SyntheticDifficulty, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Expression cues: neutral + intensity * (prototype - neutral) + jitter (mouths swapped with the coarse
    partner's in a ``coarse_swap`` share of the faces); class ``c`` shows ``expressions[c]``."""
    n = labels.shape[0]
    keys = list(NEUTRAL_EXPRESSION)
    neutral = torch.tensor([NEUTRAL_EXPRESSION[k] for k in keys])
    proto = torch.tensor([[CUE_TABLE[c].get(k, NEUTRAL_EXPRESSION[k]) for k in keys] for c in expressions])
    jitter_sd = torch.tensor([CUE_JITTER[k] for k in keys]) * d.cue_jitter
    strength = _uniform(gen, n, d.min_cue_strength, 1.0)[:, None]
    jitter = torch.randn(n, len(keys), generator=gen) * jitter_sd
    partner = torch.tensor([list(expressions).index(COARSE_PARTNER[c]) for c in expressions])
    swap = torch.rand(n, generator=gen) < d.coarse_swap
    mouth = torch.tensor([k in MOUTH_KEYS for k in keys])
    shown = torch.where(swap[:, None] & mouth, proto[partner[labels]], proto[labels])
    expr = neutral + strength * (shown - neutral) + jitter
    p = {k: expr[:, i] for i, k in enumerate(keys)}
    for k in _UNIT_CUES:
        p[k] = p[k].clamp(0, 1)
    p["eye_open"] = p["eye_open"].clamp(min=0.25)
    p["brow_weight"] = p["brow_weight"].clamp(min=0.5)
    p["mouth_width"] = p["mouth_width"].clamp(min=0.06)
    return p


#: Expression cues that are amounts in [0, 1].
_UNIT_CUES = (
    "mouth_open_up",
    "mouth_open_lo",
    "teeth_up",
    "teeth_lo",
    "forehead_lines",
    "nose_wrinkles",
    "glabella_lines",
)


def _draw_pose_and_lighting(n: int, d: SyntheticDifficulty, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Edge softness, pose (rotation, scale, shift), lighting, colour cast and sensor noise."""
    p: dict[str, torch.Tensor] = {}
    p["softness"] = _uniform(gen, n, EDGE_SOFTNESS_PX, max(EDGE_SOFTNESS_PX, d.max_edge_softness_px))
    p["angle"] = _uniform(gen, n, -1, 1) * math.radians(d.max_rotation_deg)
    p["scale"] = _uniform(gen, n, d.min_scale, d.max_scale)
    p["tx"] = _uniform(gen, n, -1, 1) * d.max_translation
    p["ty"] = _uniform(gen, n, -1, 1) * d.max_translation
    p["ambient"] = _uniform(gen, n, d.min_ambient, d.max_ambient)
    p["light_angle"] = _uniform(gen, n, 0, 2 * math.pi)
    p["light_strength"] = _uniform(gen, n, 0, d.light_gradient)
    p["cast"] = 1 + (torch.rand(n, 3, generator=gen) * 2 - 1) * d.color_cast
    sign = torch.randint(2, (n,), generator=gen) * 2 - 1  # noise fields are symmetric: flip some
    p["noise"] = _uniform(gen, n, _MIN_NOISE_FRACTION, 1.0) * d.noise_std * sign
    p["noise_index"] = torch.randint(NOISE_BANK_SIZE, (n,), generator=gen)
    p["noise_offset"] = torch.rand(n, generator=gen)  # where in its noise field an image starts
    return p


def _draw_clutter(n: int, d: SyntheticDifficulty, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Background level and gradient, clutter blobs and stripes."""
    k = d.background_blobs
    p: dict[str, torch.Tensor] = {}
    p["bg"] = _uniform(gen, 3 * n, *_BACKGROUND_LEVEL).view(n, 3)
    p["bg_grad"] = _uniform(gen, 3 * n, -_BACKGROUND_GRADIENT, _BACKGROUND_GRADIENT).view(n, 3)
    p["blob_xy"] = _uniform(gen, 2 * n * k, -_BLOB_REACH, _BLOB_REACH).view(n, k, 2)
    p["blob_r"] = _uniform(gen, 2 * n * k, *_BLOB_HALF_SIZE).view(n, k, 2)
    p["blob_edge"] = _uniform(gen, n * k, *_BLOB_EDGE).view(n, k)
    p["blob_alpha"] = _uniform(gen, n * k, _MIN_BLOB_OPACITY, 1.0).view(n, k) * d.clutter_contrast
    p["blob_color"] = torch.rand(n, k, 3, generator=gen)
    stripes = (torch.rand(n, generator=gen) < d.stripe_probability).float()
    p["stripe_on"] = stripes * d.clutter_contrast * _STRIPE_AMPLITUDE
    p["stripe_freq"] = _uniform(gen, n, *_STRIPE_FREQUENCY)
    p["stripe_angle"] = _uniform(gen, n, 0, math.pi)
    p["stripe_phase"] = _uniform(gen, n, 0, 2 * math.pi)
    p["stripe_color"] = torch.rand(n, 3, generator=gen)
    return p


def _col(v: torch.Tensor | float) -> torch.Tensor | float:
    """(n,) -> (n, 1, 1) for broadcasting against (n, H, W) maps; floats pass through."""
    return v[:, None, None] if isinstance(v, torch.Tensor) else v


def _rgb(color: tuple[float, float, float], n: int) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32).expand(n, 3)


def _cover(d: torch.Tensor, inv_px: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside; consumed in place) -> anti-aliased coverage in [0, 1]."""
    return d.mul_(-inv_px).add_(0.5).clamp_(0.0, 1.0)


def _line_cover(e: torch.Tensor, half_width: float, inv_px: torch.Tensor) -> torch.Tensor:
    """Unsigned distance to a centre line (consumed) -> coverage; lines thinner than a pixel fade."""
    return _cover(e.sub_(half_width), inv_px).mul_((2 * half_width * inv_px).clamp(max=1.0))


def _present(amount: torch.Tensor) -> torch.Tensor:
    """Fade a feature in over its first 5% (so that an absent feature leaves no anti-aliasing seam)."""
    return (amount * 20.0).clamp(0.0, 1.0)


Region = tuple[slice, slice]


class _Canvas:
    """A (3, n, S, S) image being painted, and the map from its pixels to canonical face coordinates.

    The image is channel-major (each channel a contiguous (n, S, S) block), so that one-channel maps
    broadcast over the channels along the outermost dimension, which is much faster than along dim 1.

    Canonical coordinates (u, v) are those of an upright face centred in the image; the pose maps them to
    image coordinates (x, y) = scale * R(angle) (u, v) + (tx, ty). Shapes are painted inside a
    :meth:`region` (the pixel box that holds the shape in every image of the chunk), on maps built with
    :meth:`lin`: since (u, v) are affine in (x, y), any a*u + b*v + c costs a single broadcast add.
    """

    def __init__(self, image: torch.Tensor, p: dict[str, torch.Tensor]) -> None:
        self.image, self.p = image, p
        self.n, self.size = image.shape[1], image.shape[-1]
        self.coords = (torch.arange(self.size, dtype=torch.float32) + 0.5) * (2.0 / self.size) - 1.0
        cos, sin, s = torch.cos(p["angle"]), torch.sin(p["angle"]), p["scale"]
        tx, ty = p["tx"], p["ty"]
        # (u, v) = R(-angle) ((x, y) - t) / scale
        self._u = (cos / s, sin / s, -(cos * tx + sin * ty) / s)
        self._v = (-sin / s, cos / s, (sin * tx - cos * ty) / s)
        softness = (p["softness"] * (self.size / SOFTNESS_REFERENCE_SIZE)).clamp(min=EDGE_SOFTNESS_PX)
        self.inv_px = _col(s * self.size / (2.0 * softness))
        # Multiplicative shading (creases, shadows), applied with the lighting at the end: one channel.
        self.shade = torch.ones(self.n, self.size, self.size)

    def region(self, u0, u1, v0, v1) -> Region:
        """Pixel rows/cols covering the canonical box [u0, u1] x [v0, v1] (floats or (n,)) in all images."""
        p = self.p
        us = [torch.as_tensor(u0, dtype=torch.float32).expand(self.n), torch.as_tensor(u1).expand(self.n)]
        vs = [torch.as_tensor(v0, dtype=torch.float32).expand(self.n), torch.as_tensor(v1).expand(self.n)]
        cu, cv = torch.stack([us[0], us[0], us[1], us[1]]), torch.stack([vs[0], vs[1], vs[0], vs[1]])
        cos, sin, s = torch.cos(p["angle"]), torch.sin(p["angle"]), p["scale"]
        x = s * (cos * cu - sin * cv) + p["tx"]
        y = s * (sin * cu + cos * cv) + p["ty"]
        half, margin = self.size / 2.0, 2
        c0 = max(0, math.floor((float(x.min()) + 1) * half) - margin)
        c1 = min(self.size, math.ceil((float(x.max()) + 1) * half) + margin)
        r0 = max(0, math.floor((float(y.min()) + 1) * half) - margin)
        r1 = min(self.size, math.ceil((float(y.max()) + 1) * half) + margin)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def lin(self, reg: Region, ku, kv, c=0.0) -> torch.Tensor:
        """The map ku * u + kv * v + c over the region, (n, h, w); coefficients are floats or (n,)."""
        rows, cols = reg
        kx = ku * self._u[0] + kv * self._v[0]
        ky = ku * self._u[1] + kv * self._v[1]
        k0 = ku * self._u[2] + kv * self._v[2] + c
        return (_col(kx) * self.coords[cols] + _col(k0)) + _col(ky) * self.coords[rows, None]

    def ellipse(self, reg: Region, cu, cv, a, b, mirror: bool = False) -> torch.Tensor:
        """Coverage of the ellipse centred at (cu, cv) with half-axes (a, b); ``mirror``: at (+-cu, cv)."""
        a = torch.as_tensor(a, dtype=torch.float32).expand(self.n)
        b = torch.as_tensor(b, dtype=torch.float32).expand(self.n)
        if mirror:
            x = self.lin(reg, 1 / a, 0.0).abs_().sub_(_col(cu / a))
        else:
            x = self.lin(reg, 1 / a, 0.0, -cu / a)
        q = x.square_().add_(self.lin(reg, 0.0, 1 / b, -cv / b).square_())
        # Near the boundary the distance is about (q - 1) * r / 2, r the local radius.
        k = _col(torch.sqrt(a * b) * 0.5) * self.inv_px
        return q.mul_(-k).add_(k + 0.5).clamp_(0.0, 1.0)

    def paint(self, reg: Region, color: torch.Tensor, alpha: torch.Tensor) -> None:
        """Blend ``color`` ((n, 3), before the colour cast) into the region, opacity ``alpha`` ((n, h, w))."""
        rows, cols = reg
        target = self.image[:, :, rows, cols]
        target.lerp_((color * self.p["cast"]).T[:, :, None, None].expand_as(target), alpha.unsqueeze(0))

    def darken(self, reg: Region, factor: float, alpha: torch.Tensor) -> None:
        """Multiply the region's brightness by ``factor`` where ``alpha`` ((n, h, w), consumed) is 1."""
        rows, cols = reg
        self.shade[:, rows, cols].mul_(alpha.mul_(factor - 1.0).add_(1.0))


def _soft_box(t: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """1 inside |t| < 1, 0 outside, with a linear edge of width 1/edge (in units of t)."""
    return t.abs_().neg_().add_(1.0).mul_(edge).clamp_(0.0, 1.0)


def _draw_background(p: dict[str, torch.Tensor], n: int, size: int) -> torch.Tensor:
    """Background (3, n, S, S): a sum of separable terms colour_k * f_k(x) * g_k(y), one matrix product.

    Terms: the base colour, a vertical gradient, soft- or sharp-edged rectangles (blobs) blended in, and
    (sometimes) tilted stripes, a sinusoid of (x, y), which is a sum of two separable terms.
    """
    x = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    ones = torch.ones(n, 1, size)
    fs, gs, colors = [ones, ones], [ones, x.expand(n, 1, size)], [p["bg"], p["bg_grad"]]
    if p["blob_xy"].shape[1]:
        edge = p["blob_edge"][:, :, None]
        fs.append(_soft_box((x - p["blob_xy"][:, :, 0, None]) / p["blob_r"][:, :, 0, None], edge))
        gs.append(_soft_box((x - p["blob_xy"][:, :, 1, None]) / p["blob_r"][:, :, 1, None], edge))
        colors.append((p["blob_color"] - p["bg"][:, None]) * p["blob_alpha"][:, :, None])
    # sin(a x + b y + c) = sin(a x + c) cos(b y) + cos(a x + c) sin(b y)
    fa = p["stripe_freq"]
    ax = (torch.cos(p["stripe_angle"]) * fa)[:, None, None] * x + p["stripe_phase"][:, None, None]
    by = (torch.sin(p["stripe_angle"]) * fa)[:, None, None] * x
    fs += [ax.sin(), ax.cos()]
    gs += [by.cos(), by.sin()]
    stripe = (p["stripe_color"] - p["bg"]) * p["stripe_on"][:, None]
    colors += [stripe[:, None], stripe[:, None]]
    f, g = torch.cat(fs, dim=1), torch.cat(gs, dim=1)  # (n, K, S) each
    color = torch.cat([c.view(n, -1, 3) for c in colors], dim=1) * p["cast"][:, None]  # (n, K, 3)
    k = f.shape[1]
    left = (g[None] * color.permute(2, 0, 1)[..., None]).transpose(-1, -2).reshape(3 * n, size, k)
    return torch.bmm(left, f.expand(3, n, k, size).reshape(3 * n, k, size)).view(3, n, size, size)


def _draw_head(cv: _Canvas) -> None:
    """Paint long hair, neck, shoulders, ears, the face and the hair on top."""
    p = cv.p
    fw, fh, fcy = p["face_w"], p["face_h"], p["face_cy"]
    skin = p["skin"]
    inv = cv.inv_px
    if bool((p["long_hair"] > 0).any()):  # behind the head, down to the shoulders
        half_w = fw + _LONG_HAIR_EXTRA_W
        v0, v1 = _LONG_HAIR_CENTRE_V - _LONG_HAIR_HALF_H, _LONG_HAIR_CENTRE_V + _LONG_HAIR_HALF_H
        reg = cv.region(-(half_w + _BOX_PAD), half_w + _BOX_PAD, v0 - _BOX_PAD, v1 + _BOX_PAD)
        cover = cv.ellipse(reg, 0.0, _LONG_HAIR_CENTRE_V, half_w, _LONG_HAIR_HALF_H)
        cv.paint(reg, p["hair"], cover.mul_(_col(p["long_hair"])))
    # Neck, then the shoulders (shirt) over its bottom.
    reg = cv.region(-(p["neck_w"] + _BOX_PAD), p["neck_w"] + _BOX_PAD, _NECK_TOP - _BOX_PAD, _BELOW_IMAGE)
    d = torch.maximum(cv.lin(reg, 1.0, 0.0).abs_().sub_(_col(p["neck_w"])), cv.lin(reg, 0.0, -1.0, _NECK_TOP))
    cv.paint(reg, skin * _EDGE_SHADE, _cover(d, inv))
    v0 = _SHIRT_CENTRE_V - _SHIRT_HALF_H - _BOX_PAD
    reg = cv.region(-(_SHIRT_HALF_W + _BOX_PAD), _SHIRT_HALF_W + _BOX_PAD, v0, _BELOW_IMAGE)
    cv.paint(reg, p["shirt"], cv.ellipse(reg, 0.0, _SHIRT_CENTRE_V, _SHIRT_HALF_W, _SHIRT_HALF_H))
    # Ears.
    ear_y = p["eye_y"] + _EAR_BELOW_EYES
    ear_u = fw - _EAR_INSET
    reg = cv.region(
        -(ear_u + _EAR_HALF_W + _BOX_PAD),
        ear_u + _EAR_HALF_W + _BOX_PAD,
        ear_y - _EAR_HALF_H - _BOX_PAD,
        ear_y + _EAR_HALF_H + _BOX_PAD,
    )
    cv.paint(reg, skin * _EAR_SHADE, cv.ellipse(reg, ear_u, ear_y, _EAR_HALF_W, _EAR_HALF_H, mirror=True))
    # Face: an egg (narrower towards the chin) with darker borders.
    reg = cv.region(-(fw + _BOX_PAD), fw + _BOX_PAD, fcy - fh - _BOX_PAD, fcy + fh + _BOX_PAD)
    y = cv.lin(reg, 0.0, 1 / fh, -fcy / fh)  # -1 at the top, +1 at the chin
    x = y.clamp(min=0).mul_(_col(p["jaw"])).add_(1.0).mul_(cv.lin(reg, 1 / fw, 0.0))
    q = x.square_().add_(y.square_())
    k = _col(torch.sqrt(fw * fh) * 0.5) * inv
    shade = (q - EDGE_SHADE_START).mul_(EDGE_SHADE_OPACITY / (1 - EDGE_SHADE_START))
    shade.clamp_(0.0, EDGE_SHADE_OPACITY)
    cover = q.mul_(-k).add_(k + 0.5).clamp_(0.0, 1.0)
    cv.paint(reg, skin, cover)
    cv.darken(reg, _EDGE_SHADE, shade.mul_(cover))
    # Hair on top: inside an ellipse slightly larger than the face, above the hairline (which drops
    # towards the temples).
    cap_cv, cap_w, cap_h = fcy - _HAIR_CAP_RAISE, fw + _HAIR_CAP_EXTRA_W, fh + _HAIR_CAP_EXTRA_H
    reg = cv.region(
        -(cap_w + _BOX_PAD),
        cap_w + _BOX_PAD,
        cap_cv - cap_h - _BOX_PAD,
        torch.maximum(p["hairline"] + p["hair_side"] * (cap_w / fw).square(), cap_cv) + _BOX_PAD,
    )
    cover = cv.ellipse(reg, 0.0, cap_cv, cap_w, cap_h)
    below = cv.lin(reg, 1 / fw, 0.0).square_().mul_(_col(p["hair_side"]))
    below.sub_(cv.lin(reg, 0.0, 1.0, -p["hairline"]))
    cover = torch.minimum(cover, _cover(below.neg_(), inv))
    cv.paint(reg, p["hair"], cover.mul_(_col(p["hair_density"])))
    # Cheek blush.
    cy = p["eye_y"] + _BLUSH_BELOW_EYES
    reach = _BLUSH_U + _BLUSH_HALF_W + _BOX_PAD
    reg = cv.region(-reach, reach, cy - _BLUSH_HALF_H - _BOX_PAD, cy + _BLUSH_HALF_H + _BOX_PAD)
    blush = cv.ellipse(reg, _BLUSH_U, cy, _BLUSH_HALF_W, _BLUSH_HALF_H, mirror=True)
    blush.mul_(_col(p["blush"].clamp(min=0)))
    cv.paint(reg, skin * torch.tensor(_BLUSH_TINT), blush)


def _draw_eyes(cv: _Canvas) -> None:
    p = cv.p
    inv = cv.inv_px
    ey, ex = p["eye_y"], p["eye_dx"]
    eh_v = p["eye_h"] * p["eye_open"]
    top = ey - torch.maximum(eh_v, p["iris_r"]) - _BOX_PAD
    reach = ex + p["eye_w"] + _BOX_PAD
    reg = cv.region(-reach, reach, top, ey + eh_v + _BOX_PAD)
    du = cv.lin(reg, 1.0, 0.0).abs_().sub_(_col(ex))
    dv = cv.lin(reg, 0.0, 1.0, -ey)
    ew, eh = _col(p["eye_w"]), _col(eh_v)
    # Ellipse distance normalised by its gradient (sharp all round, even for narrow eyes).
    f = (du / ew).square_().add_((dv / eh).square_()).sub_(1.0)
    grad = (du / ew.square()).square_().add_((dv / eh.square()).square_()).sqrt_().mul_(2.0).clamp_(min=1e-3)
    d_eye = f.div_(grad)
    cv.paint(reg, _rgb(_SCLERA, cv.n), _cover(d_eye.clone(), inv))
    r = du.square_().add_(dv.square()).sqrt_()
    ir = _col(p["iris_r"])
    cv.paint(reg, p["iris"], _cover(torch.maximum(r - ir, d_eye), inv))
    cv.paint(reg, _rgb(_PUPIL, cv.n), _cover(torch.maximum(r.sub_(ir * _PUPIL_FRACTION), d_eye), inv))
    # Outline; the upper lid is thicker (lashes).
    lid = torch.where(dv < 0, _UPPER_LID_WEIGHT * _LID_HALF_WIDTH, _LOWER_LID_WEIGHT * _LID_HALF_WIDTH)
    cv.paint(reg, p["hair"] * _LASH_DARKNESS, _cover(d_eye.abs_().sub_(lid), inv))


def _brow_y(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return p["eye_y"] - p["brow_gap"] - p["brow_raise"]


def _draw_brows(cv: _Canvas) -> None:
    p = cv.p
    bx, by, bl = p["eye_dx"] + p["brow_dx"], _brow_y(p), p["brow_len"]
    th = p["brow_th"] * p["brow_weight"]
    reach = p["brow_tilt"].abs() + p["brow_arch"].abs() + th * (1 + _BROW_TAPER) + _BOX_PAD
    reg = cv.region(-(bx + bl + _BOX_PAD), bx + bl + _BOX_PAD, by - reach, by + reach)
    un = cv.lin(reg, 1 / bl, 0.0).abs_().sub_(_col(bx / bl))  # -1 at the inner end, +1 at the outer end
    # Distance below the brow's centre line by - tilt * un - arch * (1 - un^2) ...
    dv = cv.lin(reg, 0.0, 1.0, p["brow_arch"] - by).sub_(un * _col(p["brow_tilt"]))
    dv.sub_(un.square().mul_(_col(p["brow_arch"])))
    # ... minus the half-thickness, which tapers towards the outer end.
    thick = (un * -_BROW_TAPER).add_(1.0).mul_(_col(th))
    d = torch.maximum(dv.abs_().sub_(thick), un.abs_().sub_(1.0).mul_(_col(bl)))
    brow = p["skin"] + (p["hair"] * _BROW_DARKNESS - p["skin"]) * _BROW_OPACITY
    cv.paint(reg, brow, _cover(d, cv.inv_px).mul_(_col(p["brow_alpha"])))


def _draw_lines(
    cv: _Canvas,
    reg: Region,
    ys: list,
    half_len: list,
    bend: float,
    strength: torch.Tensor,
    vertical: bool = False,
    offset_u: float = 0.0,
) -> None:
    """Thin creases: (near-)horizontal lines at heights ys[k] (or vertical lines at +-offset_u)."""
    u = cv.lin(reg, 1.0, 0.0)
    v = cv.lin(reg, 0.0, 1.0)
    au = u.abs_()
    for y, length in zip(ys, half_len):
        if vertical:
            e = torch.maximum((au - offset_u).abs_(), (v - _col(y)).abs_().sub_(length))
        else:
            # Centre line y - bend * (1 - (u / length)^2): arched up by ``bend`` in the middle.
            e = (au / length).square_().mul_(bend).add_(v).sub_(_col(y) - bend).abs_()
            e = torch.maximum(e, au - length)
        cv.darken(reg, _CREASE_SHADE, _line_cover(e, _LINE_HALF_WIDTH, cv.inv_px).mul_(_col(strength)))


def _draw_wrinkles(cv: _Canvas) -> None:
    """Forehead lines (surprise), vertical frown lines (anger) and nose-bridge wrinkles (disgust)."""
    p = cv.p
    if bool((p["forehead_lines"] > _PRESENT).any()):
        first = _brow_y(p) - FOREHEAD_LINE_OFFSET
        ys = [first - FOREHEAD_LINE_SPACING * k for k in range(NUM_FOREHEAD_LINES)]
        reach = _FOREHEAD_LINE_LENGTH + _BOX_PAD
        reg = cv.region(-reach, reach, ys[-1] - _FOREHEAD_LINE_ARCH - _BOX_PAD, first + _BOX_PAD)
        lengths = [_FOREHEAD_LINE_LENGTH - _FOREHEAD_LINE_SHRINK * k for k in range(NUM_FOREHEAD_LINES)]
        _draw_lines(cv, reg, ys, lengths, _FOREHEAD_LINE_ARCH, p["forehead_lines"])
    if bool((p["glabella_lines"] > _PRESENT).any()):
        gy = p["eye_y"] - p["brow_gap"] + _GLABELLA_BELOW_BROWS
        reach = _GLABELLA_U + _BOX_PAD
        half = _GLABELLA_HALF_LENGTH + _BOX_PAD
        reg = cv.region(-reach, reach, gy - half, gy + half)
        _draw_lines(
            cv,
            reg,
            [gy],
            [_GLABELLA_HALF_LENGTH],
            0.0,
            p["glabella_lines"],
            vertical=True,
            offset_u=_GLABELLA_U,
        )
    if bool((p["nose_wrinkles"] > _PRESENT).any()):
        first = p["eye_y"] + _NOSE_WRINKLE_BELOW_EYES
        ys = [first + NOSE_WRINKLE_SPACING * k for k in range(NUM_NOSE_WRINKLES)]
        lengths = [_NOSE_WRINKLE_LENGTH + _NOSE_WRINKLE_GROWTH * k for k in range(NUM_NOSE_WRINKLES)]
        reach = lengths[-1] + _BOX_PAD
        reg = cv.region(-reach, reach, first - _BOX_PAD, ys[-1] - _NOSE_WRINKLE_ARCH + _BOX_PAD)
        _draw_lines(cv, reg, ys, lengths, _NOSE_WRINKLE_ARCH, p["nose_wrinkles"])


def _draw_nose(cv: _Canvas) -> None:
    p = cv.p
    ny = p["eye_y"] + p["nose_len"]
    reach = torch.clamp(p["nostril_dx"] + _NOSTRIL_HALF_W, min=_NOSE_SHADOW_HALF_W) + _BOX_PAD
    reg = cv.region(-reach, reach, ny - _NOSE_SHADOW_HALF_H - _BOX_PAD, ny + _NOSE_SHADOW_HALF_H + _BOX_PAD)
    cv.darken(reg, _NOSE_SHADE, cv.ellipse(reg, 0.0, ny, _NOSE_SHADOW_HALF_W, _NOSE_SHADOW_HALF_H))
    nostrils = cv.ellipse(reg, p["nostril_dx"], ny, _NOSTRIL_HALF_W, _NOSTRIL_HALF_H, mirror=True)
    cv.darken(reg, _NOSTRIL_SHADE, nostrils)


def _draw_mouth(cv: _Canvas) -> None:
    p = cv.p
    inv = cv.inv_px
    my = p["eye_y"] + p["nose_len"] + p["mouth_gap"]
    w = p["mouth_width"] * p["face_w"] / _REFERENCE_FACE_W
    curve, up, lo, lip = p["mouth_curve"], p["mouth_open_up"], p["mouth_open_lo"], p["lip_t"]
    reach = curve.abs() + lip + _MOUTH_LINE_HALF_WIDTH + _BOX_PAD
    reg = cv.region(-(w + lip + _BOX_PAD), w + lip + _BOX_PAD, my - reach - up, my + reach + lo)
    un2 = cv.lin(reg, 1 / w, 0.0).square_()
    s = (1.0 - un2).clamp_(min=0).sqrt_()  # opening profile: 1 at the centre, 0 at the corners
    dv = cv.lin(reg, 0.0, 1.0, -my).add_(un2.mul_(_col(curve)))  # below the lip line, which bends by curve
    mid = s * _col((lo - up) / 2)
    half = s.mul_(_col((lo + up) / 2)).add_(_MOUTH_LINE_HALF_WIDTH)
    e = (dv - mid).abs_()
    hcap = cv.lin(reg, 1.0, 0.0).abs_().sub_(_col(w))
    d_lips = torch.maximum(e - half - _col(lip), hcap - _col(lip * _LIP_CORNER))
    cv.paint(reg, p["skin"] * torch.tensor(_LIP_TINT), _cover(d_lips, inv))
    d_open = torch.maximum(e.sub_(half), hcap)
    cv.paint(reg, _rgb(_MOUTH_INSIDE, cv.n), _cover(d_open.clone(), inv))
    teeth = _rgb(_TEETH, cv.n)
    if bool((p["teeth_up"] > _PRESENT).any()):
        limit = (half - _MOUTH_LINE_HALF_WIDTH).mul_(_col(2 * p["teeth_up"])).add_(mid).sub_(half)
        cover = _cover(torch.maximum(d_open, dv - limit), inv)
        cv.paint(reg, teeth, cover.mul_(_col(_present(p["teeth_up"]))))
    if bool((p["teeth_lo"] > _PRESENT).any()):
        limit = (half - _MOUTH_LINE_HALF_WIDTH).mul_(_col(-2 * p["teeth_lo"])).add_(mid).add_(half)
        cover = _cover(torch.maximum(d_open, limit - dv), inv)
        cv.paint(reg, teeth, cover.mul_(_col(_present(p["teeth_lo"]))))


def _render_chunk(p: dict[str, torch.Tensor], size: int, noise_bank: torch.Tensor) -> torch.Tensor:
    """Render the images of the parameters ``p`` (one chunk) as uint8 (n, 3, size, size)."""
    n = p["scale"].shape[0]
    cv = _Canvas(_draw_background(p, n, size), p)
    _draw_head(cv)
    _draw_eyes(cv)
    _draw_brows(cv)
    _draw_wrinkles(cv)
    _draw_nose(cv)
    _draw_mouth(cv)
    # Lighting: ambient x (1 + linear gradient) x colour cast, over the whole picture; then noise.
    coords = cv.coords
    la, amb = p["light_angle"], p["ambient"] * 255.0
    gain = (_col(torch.cos(la) * p["light_strength"] * amb) * coords + _col(amb)) + _col(
        torch.sin(la) * p["light_strength"] * amb
    ) * coords[:, None]
    gain.mul_(cv.shade)
    field = (size + NOISE_BANK_MARGIN) * size
    start = p["noise_index"] * field + (p["noise_offset"] * (NOISE_BANK_MARGIN * size)).long()
    noise = noise_bank.unfold(0, size * size, 1)[start].view(n, size, size)
    noise.mul_(_col(p["noise"] * 255.0)).add_(0.5)
    image = cv.image.mul_(gain).add_(noise).clamp_(0.0, 255.0)
    return image.to(torch.uint8).permute(1, 0, 2, 3)  # truncation after +0.5 rounds


def make_synthetic_faces(
    num_samples: int,
    image_size: int = 100,
    num_classes: int = 7,
    seed: int = 0,
    difficulty: SyntheticDifficulty | None = None,
    expressions: Sequence[str] = EXPRESSIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` synthetic expression faces (see the module docstring for what varies).

    Returns ``(images, labels)``: images uint8 of shape (N, 3, image_size, image_size), labels int64 of
    shape (N,) in ``range(num_classes)``, as balanced as N allows and in random order; a face of class ``c``
    shows the expression ``expressions[c]`` (every one of :data:`EXPRESSIONS`, each once, in any order: a
    face's mouth may be swapped with its class's coarse partner's). The result is a deterministic function
    of the arguments (whatever the number of threads).

    Chunks of images are rendered by up to ``torch.get_num_threads()`` worker threads; while they run,
    torch's intra-op thread count is set to 1 (and restored afterwards).
    """
    if sorted(expressions) != sorted(EXPRESSIONS):
        raise ValueError(
            f"expressions must name each of {', '.join(EXPRESSIONS)} once, got {list(expressions)}."
        )
    if not 1 <= num_classes <= len(expressions):
        raise ValueError(f"num_classes must be between 1 and {len(expressions)}, got {num_classes}.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}.")
    difficulty = difficulty or SyntheticDifficulty()
    gen = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
    images = torch.empty(num_samples, 3, image_size, image_size, dtype=torch.uint8)
    if num_samples == 0:
        return images, labels
    params = _draw_parameters(labels, expressions, difficulty, gen)
    noise_bank = torch.randn(NOISE_BANK_SIZE * (image_size + NOISE_BANK_MARGIN) * image_size, generator=gen)
    # Render images of similar vertical position together: the pixel boxes holding each facial feature in
    # every image of a chunk are then tighter. Each image depends only on its own parameters, so chunks
    # can be rendered in any order, in parallel.
    order = torch.argsort(params["ty"], stable=True)
    chunk = max(1, CHUNK_PIXELS // (image_size * image_size))
    chunks = [order[start : start + chunk] for start in range(0, num_samples, chunk)]

    def render(index: torch.Tensor) -> None:
        with torch.no_grad():
            images[index] = _render_chunk({k: v[index] for k, v in params.items()}, image_size, noise_bank)

    # Each chunk single-threaded, chunks in parallel: the many small ops of a chunk parallelise badly
    # (and very badly on a busy machine, where every op waits for the slowest of its threads).
    threads = torch.get_num_threads()
    workers = min(threads, len(chunks))
    if threads > 1:
        torch.set_num_threads(1)
    try:
        if workers <= 1:
            for index in chunks:
                render(index)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(render, chunks))
    finally:
        if threads > 1:
            torch.set_num_threads(threads)
    return images, labels
