"""synthetic-digits: handwriting-style digits drawn procedurally with NumPy.

A stand-in for MNIST that needs no download: 28x28 grey-level images of the
digits 0-9, ink 1 on a background of 0, each centred the way MNIST centres
its digits. It is meant for trying the VAE end to end (2-D latent maps,
manifolds, samples) on data that looks like handwriting, not for reporting
numbers that could be compared with MNIST.

The drawing model
-----------------
Glyph.  Each class has one or more *styles* (a 4 with an open or a closed
top, a 7 with or without a crossbar, a 1 with or without a flag and a foot,
...). A style is a set of pen strokes; a stroke is a chain of cubic Bezier
pieces (straight lines and elliptic arcs are written as Beziers too). The
glyph lives in *glyph units*: y points up and the digit spans y in
[-0.5, 0.5], about 0.6 wide.

Sampling.  A Bezier point is a fixed linear combination of its control
points, so every style carries a constant matrix ``M`` (points x control
points) that turns control points into points spaced at most about 1.2
pixels apart along the strokes (the count scales with ``size``). Whatever happens to the control points,
drawing is one matrix product.

Variation, per example:

* jitter: every anchor (a point the pen passes through) moves by a
  Gaussian offset of ``_JITTER_ANCHOR`` glyph units, and its Bezier handles
  move with it plus ``_JITTER_HANDLE`` of their own, so strokes bend a
  little differently each time;
* a gentle quadratic warp (top-heavy / bottom-heavy, bulging);
* slant (shear ``x += tan(slant) * y``, mostly leaning right), a
  width/height factor, rotation (normal with standard deviation 7.5
  degrees, clipped to +-15 degrees);
* size: like MNIST, the digit plus its stroke is scaled so its larger side
  fills ``box`` pixels, ``box`` between 0.85 and 1 of 20/28 of the image;
* position: the ink's centre of mass goes to the image centre, plus a
  small Gaussian shift (standard deviation 0.6 pixel at size 28), then
  moved back inside the frame if a stroke would touch the border;
* stroke: half-width between about 0.9 and 1.7 pixels and a soft edge
  1.0 to 1.6 pixels wide (both scaled by ``size / 28``, but at least 0.5
  and 0.8 pixel).

Rendering.  Ink is a smooth function of the distance ``d`` from the pixel
centre to the nearest stroke: ``ink = smoothstep((w + e/2 - d) / e)`` with
half-width ``w`` and edge width ``e``, so edges are anti-aliased without
supersampling. The distance comes from a sum of narrow Gaussians centred
on the stroke points, each weighted by the stroke length it stands for::

    G(p) = sum_k  l_k / (sqrt(2 pi) s) * exp(-|p - p_k|^2 / (2 s^2))

Along a stroke sampled finer than about 2 s this sum is the line integral
of a Gaussian, ``exp(-d^2 / (2 s^2))``, whatever the spacing of the
points, so ``d = sqrt(-2 s^2 log G)``; here s = 0.7 pixel (scaled up for
images larger than 28). Where two strokes meet or cross ``G`` adds up and
ink fills the joint a little, as a real pen does; at a stroke's free end
``G`` halves, so ends are rounded but shorter than a full round cap. The
Gaussian is separable, so ``G`` for one image is the product of a
(pixels_y x points) and a (points x pixels_x) matrix of 1-D Gaussians
(looked up in a table of sub-pixel positions rather than computed): the
whole batch is one batched matrix multiply, done in chunks of
``_CHUNK`` examples with reused buffers, so memory is the output plus a
few MB.

Units: glyph units for the drawing, pixels for everything after the
fit to the box; pixel (i, j) has its centre at row i, column j.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["synthetic_digits"]

# --- drawing constants (glyph units unless stated) -------------------------
_JITTER_ANCHOR = 0.045  # std of anchor offsets
_JITTER_HANDLE = 0.025  # extra std of Bezier handle offsets
_WARP = 0.25  # std of the quadratic warp coefficients
_SLANT_MEAN, _SLANT_STD = 0.1, 0.15  # radians (shear)
_SLANT_RANGE = (-0.25, 0.45)
_ROTATE_STD, _ROTATE_MAX = math.radians(7.5), math.radians(15.0)  # radians
_ASPECT_STD = 0.12  # log-normal width/height factor
_BOX_FRACTION = 20.0 / 28.0  # the MNIST box: 20 of 28 pixels
_BOX_MIN = 0.85  # box scale drawn from U(_BOX_MIN, 1)
_SHIFT_STD_PX = 0.6  # centre-of-mass shift at size 28
_HALF_WIDTH_PX = (0.9, 1.7)  # stroke half-width range at size 28
_EDGE_PX = (1.0, 1.6)  # soft-edge width range at size 28

# --- rendering constants (pixels) ------------------------------------------
_SIGMA_PX = 0.7  # s: width of the Gaussians that estimate the distance
_MAX_GAP_PX = 1.2  # largest spacing of stroke points (must stay < ~2 s)
_PX_PER_UNIT_MAX = 27.0  # generous bound on pixels per glyph unit at size 28
_TABLE_STEPS = 64  # sub-pixel positions per pixel in the Gaussian table
_CHUNK = 512  # examples rendered per batched matmul


class _Glyph:
    """One writing style of one digit, built with a small pen API.

    Control points are stored in ``points``; ``owner[i]`` is the anchor a
    point moves with under jitter (an anchor owns itself). Anchors placed
    at the same coordinates are merged, so closed loops close and strokes
    that start on another stroke stay attached to it.
    """

    def __init__(self, name: str, weight: float = 1.0):
        self.name = name
        self.weight = weight  # relative frequency among the class's styles
        self.points: list = []
        self.owner: list = []
        self.strokes: list = []  # each: list of (i0, i1, i2, i3)
        self._cur = None
        self._cache: dict = {}

    # pen API -----------------------------------------------------------
    def _anchor(self, x: float, y: float) -> int:
        for i, (px, py) in enumerate(self.points):
            if self.owner[i] == i and abs(px - x) < 1e-6 and abs(py - y) < 1e-6:
                return i
        self.points.append((float(x), float(y)))
        self.owner.append(len(self.points) - 1)
        return len(self.points) - 1

    def _handle(self, x: float, y: float, owner: int) -> int:
        self.points.append((float(x), float(y)))
        self.owner.append(owner)
        return len(self.points) - 1

    def move(self, x: float, y: float) -> "_Glyph":
        """Lift the pen and put it down at (x, y): a new stroke."""
        self.strokes.append([])
        self._cur = self._anchor(x, y)
        return self

    def curve(self, x1, y1, x2, y2, x, y) -> "_Glyph":
        """Cubic Bezier from the pen to (x, y) with handles (x1, y1), (x2, y2)."""
        i0 = self._cur
        i1 = self._handle(x1, y1, i0)
        i3 = self._anchor(x, y)
        i2 = self._handle(x2, y2, i3)
        self.strokes[-1].append((i0, i1, i2, i3))
        self._cur = i3
        return self

    def line(self, x: float, y: float) -> "_Glyph":
        """Straight line from the pen to (x, y)."""
        x0, y0 = self.points[self._cur]
        return self.curve(
            x0 + (x - x0) / 3, y0 + (y - y0) / 3,
            x0 + 2 * (x - x0) / 3, y0 + 2 * (y - y0) / 3, x, y)

    def arc(self, cx, cy, rx, ry, a0, a1) -> "_Glyph":
        """Elliptic arc from angle a0 to a1 (degrees, counter-clockwise
        positive). Starts a new stroke if the pen is up, else continues
        (with a straight line if the pen is not already at the start)."""
        t0 = math.radians(a0)
        sx, sy = cx + rx * math.cos(t0), cy + ry * math.sin(t0)
        if self._cur is None:
            self.move(sx, sy)
        else:
            px, py = self.points[self._cur]
            if abs(px - sx) > 1e-6 or abs(py - sy) > 1e-6:
                self.line(sx, sy)
        pieces = max(1, math.ceil(abs(a1 - a0) / 90.0 - 1e-9))
        angles = np.linspace(math.radians(a0), math.radians(a1), pieces + 1)
        for ta, tb in zip(angles[:-1], angles[1:]):
            k = 4.0 / 3.0 * math.tan((tb - ta) / 4.0)  # handle length factor
            ax, ay = cx + rx * math.cos(ta), cy + ry * math.sin(ta)
            bx, by = cx + rx * math.cos(tb), cy + ry * math.sin(tb)
            self.curve(
                ax - k * rx * math.sin(ta), ay + k * ry * math.cos(ta),
                bx + k * rx * math.sin(tb), by - k * ry * math.cos(tb),
                bx, by)
        return self

    def up(self) -> "_Glyph":
        """Lift the pen (the next arc starts a new stroke)."""
        self._cur = None
        return self

    # sampling ----------------------------------------------------------
    def sampler(self, size: int):
        """(ctrl, owner, M, link) for images of ``size`` pixels.

        ctrl (C, 2) float64 control points; owner (C,) int; M (K, C)
        float64 with points = M @ ctrl; link (K-1,) bool, True where
        point k and k+1 lie on the same stroke.
        """
        if size in self._cache:
            return self._cache[size]
        ctrl = np.asarray(self.points, dtype=np.float64)
        density = _PX_PER_UNIT_MAX * (size / 28.0) / _MAX_GAP_PX  # points/unit
        rows, link = [], []  # link[k]: point k continues the stroke of k-1
        for stroke in self.strokes:
            first = True
            for seg in stroke:
                p = ctrl[list(seg)]
                chord = np.linalg.norm(p[3] - p[0])
                poly = np.linalg.norm(np.diff(p, axis=0), axis=1).sum()
                m = max(2, math.ceil(0.5 * (chord + poly) * density))
                t = np.linspace(0.0, 1.0, m + 1)
                if not first:
                    t = t[1:]  # shared with the end of the previous piece
                basis = np.stack(
                    [(1 - t) ** 3, 3 * t * (1 - t) ** 2,
                     3 * t ** 2 * (1 - t), t ** 3], axis=1)
                block = np.zeros((len(t), len(ctrl)))
                for j, i in enumerate(seg):
                    block[:, i] += basis[:, j]
                rows.append(block)
                link.extend([not (first and q == 0) for q in range(len(t))])
                first = False
        M = np.concatenate(rows, axis=0)
        link = np.asarray(link[1:], dtype=bool)  # now: k+1 continues k
        out = (ctrl, np.asarray(self.owner, dtype=np.intp), M, link)
        self._cache[size] = out
        return out


def _glyphs() -> list:
    """The styles of each digit, glyph units, y up, height [-0.5, 0.5]."""
    G = _Glyph
    d = [[] for _ in range(10)]

    # 0: closed oval, oval started at the top and overshooting, narrow oval
    d[0].append(G("oval").arc(0, 0, 0.28, 0.5, 90, 450))
    d[0].append(G("overshoot").arc(0, 0.0, 0.3, 0.5, 100, 475))
    d[0].append(G("narrow", 0.6).arc(0, 0, 0.2, 0.5, 80, 440))

    # 1: bare stroke, with a flag, with flag and foot
    d[1].append(G("bar", 1.2).move(0, 0.5).line(0, -0.5))
    d[1].append(G("flag").move(-0.14, 0.33).line(0, 0.5).line(0, -0.5))
    d[1].append(G("flag-foot", 0.35).move(-0.14, 0.33).line(0, 0.5).line(0, -0.5)
                .move(-0.17, -0.5).line(0.17, -0.5))

    # 2: round top, curved neck, flat base; straight neck; looped base
    d[2].append(G("curved").arc(0, 0.22, 0.27, 0.28, 160, -15)
                .curve(0.2, -0.05, -0.12, -0.25, -0.3, -0.5).line(0.32, -0.5))
    d[2].append(G("straight").arc(0, 0.22, 0.28, 0.28, 165, -20)
                .line(-0.3, -0.5).line(0.32, -0.48))
    d[2].append(G("loop", 0.7).arc(0, 0.22, 0.27, 0.28, 160, -15)
                .curve(0.18, -0.08, -0.1, -0.3, -0.22, -0.44)
                .curve(-0.3, -0.52, -0.16, -0.56, -0.08, -0.42)
                .curve(-0.02, -0.34, 0.1, -0.5, 0.32, -0.48))

    # 3: two bowls; flat top with a diagonal
    d[3].append(G("bowls").arc(0, 0.25, 0.24, 0.25, 150, -90)
                .arc(0, -0.25, 0.28, 0.25, 90, -150))
    d[3].append(G("pointed").arc(0.0, 0.26, 0.24, 0.24, 155, -60)
                .line(-0.06, 0.02)
                .curve(0.3, 0.06, 0.34, -0.3, 0.1, -0.46)
                .curve(-0.02, -0.53, -0.2, -0.52, -0.28, -0.4))
    d[3].append(G("flat-top", 0.6).move(-0.25, 0.5).line(0.25, 0.5)
                .line(-0.04, 0.06).arc(0, -0.22, 0.28, 0.28, 95, -150))

    # 4: closed (triangle) top, open top
    d[4].append(G("closed").move(0.12, 0.5).line(-0.3, -0.15).line(0.32, -0.15)
                .move(0.12, 0.5).line(0.12, -0.5))
    d[4].append(G("open").move(-0.22, 0.5).line(-0.28, -0.12).line(0.32, -0.12)
                .move(0.14, 0.34).line(0.14, -0.5))

    # 5: flag, stem, bowl; the flag drawn last
    d[5].append(G("bowl").move(0.27, 0.5).line(-0.17, 0.5).line(-0.22, 0.06)
                .curve(0.05, 0.18, 0.3, 0.06, 0.28, -0.2)
                .curve(0.26, -0.48, -0.05, -0.56, -0.28, -0.4))
    d[5].append(G("flag-last").move(-0.17, 0.48).line(-0.22, 0.02)
                .curve(0.1, 0.2, 0.32, 0.0, 0.27, -0.24)
                .curve(0.22, -0.5, -0.1, -0.54, -0.26, -0.38)
                .move(-0.17, 0.48).line(0.26, 0.5))

    # 6: a sweep from the top into a closed loop at the bottom
    d[6].append(G("loop").move(0.2, 0.5)
                .curve(-0.12, 0.32, -0.27, 0.05, -0.27, -0.22)
                .arc(0, -0.22, 0.27, 0.27, 180, 540))
    d[6].append(G("straight-back").move(0.14, 0.5).line(-0.24, -0.18)
                .arc(0.0, -0.25, 0.25, 0.25, 164, 520))

    # 7: plain, with crossbar, curved stem
    d[7].append(G("plain").move(-0.28, 0.5).line(0.3, 0.5).line(-0.05, -0.5))
    d[7].append(G("crossbar", 0.7).move(-0.28, 0.5).line(0.3, 0.5)
                .line(-0.05, -0.5).move(-0.06, 0.0).line(0.3, 0.0))
    d[7].append(G("curved").move(-0.28, 0.44).line(-0.28, 0.5).line(0.3, 0.5)
                .curve(0.12, 0.15, 0.0, -0.2, -0.02, -0.5))

    # 8: two stacked loops; one stroke crossing at the waist
    d[8].append(G("loops").arc(0, 0.26, 0.21, 0.24, 270, 630).up()
                .arc(0, -0.24, 0.26, 0.26, 90, 450))
    d[8].append(G("s-stroke").move(0.2, 0.38)
                .curve(0.16, 0.56, -0.24, 0.56, -0.22, 0.3)
                .curve(-0.2, 0.12, 0.28, -0.04, 0.28, -0.26)
                .curve(0.28, -0.56, -0.28, -0.56, -0.28, -0.26)
                .curve(-0.28, -0.04, 0.2, 0.14, 0.2, 0.38))

    # 9: loop with straight stem, loop with curved stem
    d[9].append(G("straight").arc(0, 0.22, 0.26, 0.27, 0, 360)
                .line(0.22, -0.5))
    d[9].append(G("curved").arc(0, 0.22, 0.26, 0.27, 0, 360)
                .curve(0.27, -0.15, 0.12, -0.5, -0.12, -0.47))
    return d


_STYLES = None


def _styles() -> list:
    global _STYLES
    if _STYLES is None:
        _STYLES = _glyphs()
    return _STYLES


def synthetic_digits(n: int, seed=0, size: int = 28):
    """Draw ``n`` handwriting-style digit images.

    Parameters
    ----------
    n : int
        Number of images, >= 1.
    seed : int or np.random.Generator
        Seed of the generator that drives every random choice (passed to
        ``np.random.default_rng``). The same ``(n, seed, size)`` gives
        bit-identical arrays on the same machine and NumPy.
    size : int
        Side of the square images in pixels, >= 8 (28 matches MNIST; the
        digit fills about a ``20/28 * size`` box).

    Returns
    -------
    images : ndarray, float32, shape (n, size, size)
        Ink in [0, 1] (0 background, 1 full ink), row 0 at the top.
    labels : ndarray, int64, shape (n,)
        Digit classes 0..9, each ``n // 10`` or ``n // 10 + 1`` times, in
        shuffled order.

    The drawing model (strokes, random variations, anti-aliased rendering)
    is described in the module docstring of ``scratchvae.data.synthetic``.
    Cost is about 15 microseconds an image at size 28 on one core (60,000
    images in about a second); memory is the output plus a few MB.

    Examples
    --------
    >>> images, labels = synthetic_digits(1000, seed=0)
    >>> images.shape, images.dtype, labels[:5]          # doctest: +SKIP
    ((1000, 28, 28), dtype('float32'), array([...]))
    >>> x = images.reshape(len(images), -1)  # (batch, 784) for the VAE
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"n must be a positive int, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if size < 8:
        raise ValueError(f"size must be an int >= 8, got {size}")
    n, size = int(n), int(size)
    rng = np.random.default_rng(seed)
    styles = _styles()

    labels = rng.permutation(np.arange(n, dtype=np.int64) % 10)

    # per-example draws, all made up front in a fixed order
    u_style = rng.random(n)
    warp = rng.normal(0.0, _WARP, size=(n, 4))
    slant = np.clip(rng.normal(_SLANT_MEAN, _SLANT_STD, n), *_SLANT_RANGE)
    angle = np.clip(rng.normal(0.0, _ROTATE_STD, n), -_ROTATE_MAX, _ROTATE_MAX)
    aspect = np.exp(rng.normal(0.0, _ASPECT_STD, n))
    px = size / 28.0
    box = _BOX_FRACTION * size * rng.uniform(_BOX_MIN, 1.0, n)
    shift = np.clip(rng.normal(0.0, _SHIFT_STD_PX * px, (n, 2)), -2 * px, 2 * px)
    # (floored so small images still get strokes about a pixel wide)
    half_width = np.maximum(rng.uniform(*_HALF_WIDTH_PX, n) * px, 0.5)
    edge = np.maximum(rng.uniform(*_EDGE_PX, n) * px, 0.8)

    images = np.empty((n, size, size), dtype=np.float32)
    # work buffers, reused by every chunk (fresh large arrays would cost a
    # page fault per 4 kB in the kernel, about as much as the drawing)
    k_max = max(g.sampler(size)[2].shape[0] for gs in styles for g in gs)
    chunk = min(_CHUNK, n)
    work = tuple(np.empty(chunk * m * size, dtype=np.float32)
                 for m in (k_max, k_max, size, size))
    for c in range(10):
        members = np.flatnonzero(labels == c)
        w = np.array([g.weight for g in styles[c]])
        bins = np.cumsum(w) / w.sum()
        bins[-1] = 1.0
        which = np.searchsorted(bins, u_style[members], side="right")
        for s, glyph in enumerate(styles[c]):
            idx = members[which == s]
            if idx.size == 0:
                continue
            ctrl, owner, M, link = glyph.sampler(size)
            jit_a = rng.normal(0.0, _JITTER_ANCHOR, (idx.size, len(ctrl), 2))
            jit_h = rng.normal(0.0, _JITTER_HANDLE, (idx.size, len(ctrl), 2))
            is_handle = owner != np.arange(len(ctrl))
            for lo in range(0, idx.size, chunk):
                sl = slice(lo, lo + chunk)
                j = idx[sl]
                offset = jit_a[sl][:, owner] + jit_h[sl] * is_handle[None, :, None]
                images[j] = _render(
                    ctrl[None] + offset, M, link, size,
                    warp[j], slant[j], angle[j], aspect[j], box[j],
                    shift[j], half_width[j], edge[j], work)
    return images, labels


_TABLES: dict = {}  # size -> (table, sigma, pad)


def _gauss_table(size: int):
    """Lookup table of the 1-D Gaussians used by the renderer.

    Row ``q`` holds ``exp(-(j - x)^2 / (2 s^2))`` for the pixel centres
    j = 0..size-1 and the point position ``x = q / _TABLE_STEPS - pad``, so
    gathering rows replaces an ``exp`` per (point, pixel) pair; positions
    are quantised to 1/_TABLE_STEPS pixel. Values are floored at exp(-40):
    products of two entries stay normal floats (denormals are slow) and
    still mean "far from every stroke". Returns (table, sigma, pad).
    """
    if size not in _TABLES:
        s = _SIGMA_PX * max(1.0, size / 28.0)
        pad = math.ceil(8 * s)
        x = np.arange(-pad * _TABLE_STEPS, (size + pad) * _TABLE_STEPS + 1)
        x = x / _TABLE_STEPS
        z = (np.arange(size)[None, :] - x[:, None]) ** 2 / (-2 * s * s)
        _TABLES[size] = (np.exp(np.maximum(z, -40.0)).astype(np.float32), s, pad)
    return _TABLES[size]


def _render(ctrl, M, link, size, warp, slant, angle, aspect, box, shift,
            half_width, edge, work):
    """Render one chunk of one style.

    ctrl (B, C, 2) jittered control points in glyph units; M (K, C) and
    link (K-1,) from ``_Glyph.sampler``; the rest are per-example arrays of
    shape (B,), (B, 2) or (B, 4); work holds four flat float32 buffers,
    two of at least B*K*size and two of at least B*size*size elements.
    Returns a view of the third: (B, size, size) float32 ink.
    """
    B, K = len(ctrl), M.shape[0]
    x, y = ctrl[..., 0], ctrl[..., 1]
    # quadratic warp, then slant, width, rotation (all on control points)
    q = warp[:, :, None]
    x, y = (x + q[:, 0] * x * y + q[:, 1] * (y * y - 0.25),
            y + q[:, 2] * (x * x - 0.1) + q[:, 3] * x * y)
    x = (x + np.tan(slant)[:, None] * y) * aspect[:, None]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    # stroke points in image coordinates: column right, row down; (B, K).
    # Stacked (1, C) @ (C, K) products: one small BLAS call per example,
    # which never starts BLAS threads (a threaded GEMM here is slower on a
    # busy machine than the whole rest of the renderer).
    MT = np.ascontiguousarray(M.T)
    col = np.matmul((ca * x - sa * y)[:, None, :], MT)[:, 0]
    row = np.matmul((-(sa * x + ca * y))[:, None, :], MT)[:, 0]

    # MNIST-like size: digit plus stroke fills the box on its longer side
    # (stroke ends stick out about half a half-width past their points)
    extent = np.maximum(col.max(axis=1) - col.min(axis=1),
                        row.max(axis=1) - row.min(axis=1))
    scale = (box - half_width) / np.maximum(extent, 1e-6)
    col *= scale[:, None]
    row *= scale[:, None]

    # arc length each point stands for (trapezoid weights along strokes)
    dc, dr = np.diff(col, axis=1), np.diff(row, axis=1)
    seg = np.sqrt(dc * dc + dr * dr) * link
    weight = np.zeros_like(col)
    weight[:, 1:] += 0.5 * seg
    weight[:, :-1] += 0.5 * seg

    # centre of mass of the ink at the image centre, plus a small shift
    total = weight.sum(axis=1)
    centre = (size - 1) / 2.0
    col += (centre + shift[:, 0] - (weight * col).sum(axis=1) / total)[:, None]
    row += (centre + shift[:, 1] - (weight * row).sum(axis=1) / total)[:, None]
    # ... but never cut off: keep the stroke half a pixel inside the frame
    for p in (col, row):
        lo = p.min(axis=1) - half_width - 0.5
        hi = p.max(axis=1) + half_width + 0.5 - (size - 1)
        p -= (np.minimum(lo, 0) + np.maximum(hi, 0))[:, None]

    # separable Gaussians: G[b, r, c] = sum_k gy[b, k, r] * gx[b, k, c]
    table, s, pad = _gauss_table(size)
    gx = work[0][:B * K * size].reshape(B, K, size)
    gy = work[1][:B * K * size].reshape(B, K, size)
    G = work[2][:B * size * size].reshape(B, size, size)
    T = work[3][:B * size * size].reshape(B, size, size)
    np.take(table, ((col + pad) * _TABLE_STEPS + 0.5).astype(np.intp),
            axis=0, mode="clip", out=gx)
    np.take(table, ((row + pad) * _TABLE_STEPS + 0.5).astype(np.intp),
            axis=0, mode="clip", out=gy)
    gy *= (weight / (math.sqrt(2 * math.pi) * s)).astype(np.float32)[:, :, None]
    np.matmul(gy.transpose(0, 2, 1), gx, out=G)  # (B, rows, cols)

    # distance d = sqrt(-2 s^2 log G), then ink = smoothstep((w + e/2 - d) / e)
    np.maximum(G, np.float32(1e-37), out=G)
    np.log(G, out=G)
    G *= np.float32(-2 * s * s)
    np.maximum(G, 0, out=G)
    np.sqrt(G, out=G)  # G now holds d
    e = edge.astype(np.float32)[:, None, None]
    G -= half_width.astype(np.float32)[:, None, None] + 0.5 * e
    G /= -e
    np.clip(G, 0, 1, out=G)  # t
    np.multiply(G, np.float32(-2), out=T)
    T += np.float32(3)
    G *= G
    G *= T  # t^2 (3 - 2 t)
    return G
