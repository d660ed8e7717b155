"""A "new handwriting" made from MNIST digits: uploads in a style the trained model has not seen.

    styled_upload(digit28, style, rng) -> PNG bytes (dark ink on white paper, 160x160)

STYLES maps a name to (stroke width in pixels at 4x scale, slant as a horizontal shear, rotation in
degrees, each drawn per image from a small range around it). Used by the retraining end-to-end test and
bench/retrain.py; deterministic for a given numpy Generator.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SCALE = 4  # the digit is drawn at 112x112 before the style is applied
CANVAS = 160
# name -> (MaxFilter size: stroke thickening, shear, rotation in degrees)
STYLES = {
    "thick": (9, 0.0, 0.0),
    "slanted": (1, 0.6, 0.0),
    "rotated": (1, 0.0, 40.0),
    "thick-slanted-rotated": (9, 0.5, 30.0),
}


def styled_image(digit: np.ndarray, style: str, rng: np.random.Generator) -> Image.Image:
    """The digit (uint8 [28, 28], white on black) in `style`: white ink on black, CANVAS pixels a side."""
    width, shear, degrees = STYLES[style]
    size = 28 * SCALE
    big = Image.fromarray(np.asarray(digit, dtype=np.uint8), "L").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    canvas.paste(big, ((CANVAS - size) // 2, (CANVAS - size) // 2))
    if width > 1:
        canvas = Image.fromarray(_dilate(np.asarray(canvas), width), "L")
    if shear:
        s = shear * float(rng.uniform(0.8, 1.2))
        # x_in = x_out + s * (y_out - centre): the top of the digit leans right
        canvas = canvas.transform(
            canvas.size, Image.Transform.AFFINE, (1, s, -s * CANVAS / 2, 0, 1, 0), Image.Resampling.BILINEAR
        )
    if degrees:
        canvas = canvas.rotate(
            degrees * float(rng.uniform(0.8, 1.2)) * (1 if rng.random() < 0.5 else -1),
            resample=Image.Resampling.BILINEAR,
        )
    return canvas


def _dilate(pixels: np.ndarray, width: int) -> np.ndarray:
    """The maximum over a width x width square around each pixel (PIL's MaxFilter(width), which sorts every
    window: ~50x slower), as two passes of shifted maxima."""
    out = pixels
    for axis in (0, 1):
        padded = np.pad(out, [(width // 2, width // 2) if a == axis else (0, 0) for a in (0, 1)])
        size = out.shape[axis]
        out = np.max([np.take(padded, range(k, k + size), axis=axis) for k in range(width)], axis=0)
    return out


def styled_upload(digit: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """A PNG upload of the styled digit, dark ink on white paper (what a user's drawing looks like)."""
    ink = np.asarray(styled_image(digit, style, rng), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(255 - ink, "L").save(out, format="PNG")
    return out.getvalue()
