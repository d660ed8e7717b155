"""Numpy steps of the MNIST conversion: ink extraction, background removal, thresholding, framing.

Every function takes and returns float32 arrays on a 0..255 scale; "ink" arrays are bright ink on a dark
(ideally 0) background, the MNIST convention. Pure numpy plus Pillow resampling: no scipy or OpenCV, so the
gateway image stays slim.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

MNIST_SIZE = 28
MNIST_BOX = 20  # MNIST digits were scaled to fit 20x20, then centred by mass in 28x28
MNIST_CENTRE = 14.0  # where MNIST's centres of mass sit (mean over the test set: 13.99, 14.01)
FLAT_SPREAD = 12.0  # a border whose 10-90% grey spread is within this is flat paper
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's convert("L")


def backdrop(rgb: np.ndarray, alpha: np.ndarray) -> float:
    """What to flatten RGBA onto: white, or black when the opaque strokes are light (white ink on a
    transparent canvas would otherwise vanish)."""
    opaque = alpha > 127
    if 0.01 * alpha.size < opaque.sum() < 0.8 * alpha.size:
        stroke_luma = float((rgb[opaque] @ LUMA).mean())
        if stroke_luma > 160:
            return 0.0
    return 255.0


def composite(rgb: np.ndarray, alpha: np.ndarray, background: float) -> np.ndarray:
    """RGB(A) flattened onto a grey level."""
    a = alpha[..., None] / 255.0
    return rgb * a + background * (1.0 - a)


def border(values: np.ndarray) -> np.ndarray:
    """The pixels of the outer ring (5% of the short side, at least one pixel)."""
    h, w = values.shape[:2]
    k = max(1, min(h, w) // 20)
    return np.concatenate(
        [
            values[:k].reshape(-1),
            values[-k:].reshape(-1),
            values[:, :k].reshape(-1),
            values[:, -k:].reshape(-1),
        ]
    )


def ink_map(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Grey or RGB pixels -> (ink bright on dark, whether the input was dark ink on a light background).

    The background is what the image's border mostly is. Colour ink is taken from its most contrasting
    channel (the darkest channel on light paper, the brightest on a dark board), so blue, red or green ink
    stands out as well as black; grey input is simply inverted when needed.
    """
    luma = pixels @ LUMA if pixels.ndim == 3 else pixels
    midrange = (float(luma.min()) + float(luma.max())) / 2
    light_background = quantile(border(luma), 0.5) > midrange
    if pixels.ndim == 3:
        ink = 255.0 - pixels.min(axis=2) if light_background else pixels.max(axis=2)
    else:
        ink = 255.0 - luma if light_background else luma
    return ink.astype(np.float32, copy=False), light_background


def background(values: np.ndarray) -> np.ndarray:
    """The slowly varying background of a picture (paper under uneven light, vignetting, a tinted sheet).

    A flat border means flat paper: its median. Otherwise a quadratic surface fitted to the medians of
    coarse blocks, starting from the outer blocks and refitted a few times with the blocks it fits well:
    blocks covered mostly by ink are outliers a quadratic can't follow, so they are dropped whatever the
    ink's polarity, while a light gradient or a vignette fits well.
    """
    h, w = values.shape
    edge = border(values)
    if quantile(edge, 0.9) - quantile(edge, 0.1) <= FLAT_SPREAD:
        # A drawing, a scan, a canvas: flat paper. No fit, so even a digit covering most of it is safe.
        return np.full((h, w), quantile(edge, 0.5), dtype=np.float32)
    block = max(8, min(h, w) // 12)
    gh, gw = h // block, w // block
    blocks = values[: gh * block, : gw * block].reshape(gh, block, gw, block).transpose(0, 2, 1, 3)
    medians = np.median(blocks.reshape(gh, gw, -1), axis=2).ravel()
    cy, cx = np.meshgrid((np.arange(gh) + 0.5) * block / h, (np.arange(gw) + 0.5) * block / w, indexing="ij")
    terms = _quadratic_terms(cy.ravel(), cx.ravel())
    # Start from the outer blocks (mostly paper), then let every block that fits in.
    keep = np.zeros((gh, gw), dtype=bool)
    keep[[0, -1], :] = keep[:, [0, -1]] = True
    keep = keep.ravel()
    for _ in range(5):
        coef, *_ = np.linalg.lstsq(terms[keep], medians[keep], rcond=None)
        residual = medians - terms @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))
        updated = np.abs(residual) <= 3 * spread + 2.0
        if updated.sum() < 6 or np.array_equal(updated, keep):
            break
        keep = updated
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w
    c0, c1, c2, c3, c4, c5 = coef.astype(np.float32)
    # c0 + c1*y + c2*x + c3*y^2 + c4*x*y + c5*x^2, evaluated by broadcasting rows against columns
    return (c0 + c1 * ys + c3 * ys**2)[:, None] + (c2 * xs + c5 * xs**2)[None, :] + c4 * np.outer(ys, xs)


def _quadratic_terms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(y), y, x, y * y, x * y, x * x], axis=1)


def lit_ink_map(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Like ink_map, for pictures large enough to have uneven light: the ink is what departs from the
    local background, and its polarity is the side where most of that departure lies (a dark vignette
    can't flip it, as it can a border-based guess)."""
    luma = pixels @ LUMA if pixels.ndim == 3 else pixels
    residual = luma - background(luma)
    noise = quantile(np.abs(residual), 0.5)
    floor = max(12.0, 4.0 * noise)
    dark = float(np.clip(-residual - floor, 0, None).sum())
    light = float(np.clip(residual - floor, 0, None).sum())
    light_background = dark > light
    if pixels.ndim == 3:  # the most contrasting channel: dark ink darkens some channel the most
        channel = pixels.min(axis=2) if light_background else pixels.max(axis=2)
        residual = channel - background(channel)
    ink = -residual if light_background else residual
    return np.clip(ink, 0, None).astype(np.float32, copy=False), light_background


def smooth(ink: np.ndarray, radius: int) -> np.ndarray:
    """A light box blur as uint8 (noise suppression before thresholding; only compared with thresholds)."""
    img = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8), "L")
    return np.asarray(img.filter(ImageFilter.BoxBlur(radius)) if radius > 0 else img)


def histogram(values: np.ndarray) -> np.ndarray:
    """Counts of the 256 grey levels (values rounded down, clipped to 0..255)."""
    if values.dtype != np.uint8:
        values = np.clip(values, 0, 255).astype(np.uint8)
    return np.bincount(values.ravel(), minlength=256)


def quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of a 0..255 array to one grey level: a histogram, much faster than
    np.percentile on large images."""
    cumulative = np.cumsum(histogram(values))
    if cumulative[-1] == 0:
        return 0.0
    return float(np.searchsorted(cumulative, q * cumulative[-1]))


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold over a 0..255 array (maximises the between-class variance)."""
    hist = histogram(values).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight_lo = np.cumsum(hist)
    weight_hi = weight_lo[-1] - weight_lo
    mass_lo = np.cumsum(hist * levels)
    mean_lo = mass_lo / np.maximum(weight_lo, 1)
    mean_hi = (mass_lo[-1] - mass_lo) / np.maximum(weight_hi, 1)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(np.argmax(between)) + 0.5


def _label_grid(occupied: np.ndarray) -> np.ndarray:
    """8-connected component labels of a small boolean grid (0 = empty). Each row's runs of occupied cells
    are found in numpy; a run joins the runs it touches in the row above (overlapping, or diagonally
    adjacent) through a union-find over runs, a few hundred at most for a digit, so the Python part stays
    small whatever the strokes' shape."""
    h, w = occupied.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)  # (np.pad costs ten times this)
    padded[:, 1:-1] = occupied
    steps = padded[:, 1:] - padded[:, :-1]  # 1 where a run starts, -1 just after it ends
    start_rows, starts = np.nonzero(steps == 1)
    ends = np.nonzero(steps == -1)[1]  # exclusive; runs come row by row, left to right
    parent = list(range(len(starts)))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    row_begins = np.searchsorted(start_rows, np.arange(h + 1)).tolist()
    starts_, ends_ = starts.tolist(), ends.tolist()
    for row in range(1, h):
        above, above_end = row_begins[row - 1], row_begins[row]
        here, here_end = row_begins[row], row_begins[row + 1]
        while above < above_end and here < here_end:
            # 8-connected: [s1, e1) and [s2, e2) touch when s1 <= e2 and s2 <= e1
            if starts_[above] <= ends_[here] and starts_[here] <= ends_[above]:
                a, b = root(above), root(here)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends_[above] < ends_[here]:  # the run that ends first can touch nothing further right
                above += 1
            else:
                here += 1
    labels = np.zeros(len(starts) + 1, dtype=np.int32)  # by run number + 1; 0 stays "empty"
    labels[1:] = [root(run) + 1 for run in range(len(starts))]
    run_of_cell = np.cumsum(steps[:, :-1] == 1).reshape(h, w)  # the latest run started, row-major
    return np.where(occupied, labels[run_of_cell], 0).astype(np.int32)


def digit_mask(mask: np.ndarray, *, keep_fraction: float = 0.08) -> np.ndarray:
    """Keep the connected parts of a thresholded mask that carry real ink; drop specks and noise.

    Components are found on a coarse grid (at most 48 cells a side, 8-connected), so pieces of one digit
    separated by a thin gap stay together; a part survives when its ink is at least `keep_fraction` of the
    largest part's.
    """
    h, w = mask.shape
    cell = max(1, -(-max(h, w) // 48))
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((gh * cell, gw * cell), dtype=np.uint8)
    padded[:h, :w] = mask
    # Rows of cells, then columns: two reductions over contiguous axes, several times faster than one
    # over axes (1, 3) of the 4-d view.
    mass = padded.reshape(gh, cell, gw * cell).sum(axis=1, dtype=np.int32).reshape(gh, gw, cell).sum(axis=2)
    labels = _label_grid(mass > 0)
    masses = np.bincount(labels.ravel(), weights=mass.ravel())
    masses[0] = 0
    if np.count_nonzero(masses) <= 1:
        return mask
    kept_cells = (masses >= keep_fraction * masses.max())[labels] & (labels > 0)
    return mask & np.repeat(np.repeat(kept_cells, cell, axis=0), cell, axis=1)[:h, :w]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), bottom/right exclusive; None for an empty mask."""
    return bounding_box_of(mask.any(axis=1), mask.any(axis=0))


def bounding_box_of(rows: np.ndarray, cols: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box of the rows and columns flagged True (as bounding_box); None when none is."""
    rows, cols = np.flatnonzero(rows), np.flatnonzero(cols)
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_box(ink: np.ndarray, box: tuple[int, int, int, int], size: int = MNIST_BOX) -> np.ndarray:
    """Scale the digit inside `box` (top, bottom, left, right) to fit size x size, keeping its aspect ratio,
    with anti-aliasing. A margin of about one output pixel around the box comes along, so the soft edges
    of the strokes are kept rather than cut."""
    top, bottom, left, right = box
    scale = size / max(bottom - top, right - left)
    margin = int(np.ceil(1 / scale))
    h, w = ink.shape
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(h, bottom + margin), min(w, right + margin)
    crop = ink[top:bottom, left:right].astype(np.float32, copy=False)
    out = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    resized = Image.fromarray(crop, "F").resize(out, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0, 255)


def centre_by_mass(digit: np.ndarray, size: int = MNIST_SIZE, centre: float = MNIST_CENTRE) -> np.ndarray:
    """Place a digit in a size x size black field so its centre of mass lands on `centre` (whole pixels,
    so nothing is resampled again), keeping it entirely inside the field."""
    h, w = digit.shape
    total = float(digit.sum())
    if total > 0:
        cy = float((digit.sum(axis=1) * np.arange(h)).sum()) / total
        cx = float((digit.sum(axis=0) * np.arange(w)).sum()) / total
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    top = min(max(round(centre - cy), 0), size - h)
    left = min(max(round(centre - cx), 0), size - w)
    field = np.zeros((size, size), dtype=np.float32)
    field[top : top + h, left : left + w] = digit
    return field


def to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
