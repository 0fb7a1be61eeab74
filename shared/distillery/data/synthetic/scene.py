"""Procedural driving scenes: a pinhole camera over a street, rendered with numpy.

A scene is built in metres and projected with a pinhole camera (focal length ``f`` pixels, height
``cam_h`` above a flat ground, horizon row ``yh``, vanishing column ``vx``):

    x = vx + f * X / Z,        y = yh + f * (cam_h - Y) / Z

(world coordinates X right, Y up, Z forward; `wx`, `wy`, `wz` in the code), so everything
shrinks towards the horizon as in a real dashcam frame. Layers, back to front:
sky, far skyline (buildings / tree line), the ground (road with lane markings, sidewalks beyond
a kerb, terrain, intersections with crosswalks, parking and rail void areas), facades along both
sides (buildings with windows, walls and fences with hedges, park vegetation), then objects
sorted far to near (vehicles with shadows, pedestrians, riders on bicycles / motorcycles, parked
bicycles, poles with signs and traffic lights, trees, void clutter), then the ego-vehicle bonnet.

The classes that are hard to tell apart share their colour distributions and differ only in
shape, size and surroundings, as in real images:

- road / sidewalk: both grey asphalt-like, same grey range; the sidewalk lies beyond the kerb;
- car / truck / bus (and train): one body palette; they differ in size, aspect ratio and
  details (car cabin and trunk, truck cab + cargo box, bus window rows and doors, long tram on
  rails);
- person / rider: one clothes palette; a rider is a person on a bicycle or motorcycle;
- building / wall: walls are low facades in the building palette.

Labels are Cityscapes labelIds (0..33, void ids included: ego vehicle, rectification border,
static, dynamic, ground, parking, rail track, caravan, trailer); BDD100K masks are derived from
them with the official labelId -> trainId table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Cityscapes labelIds.
UNLABELED, EGO, RECT_BORDER, STATIC, DYNAMIC, GROUND = 0, 1, 2, 4, 5, 6
ROAD, SIDEWALK, PARKING, RAIL = 7, 8, 9, 10
BUILDING, WALL, FENCE = 11, 12, 13
POLE, LIGHT, SIGN = 17, 19, 20
VEGETATION, TERRAIN, SKY = 21, 22, 23
PERSON, RIDER = 24, 25
CAR, TRUCK, BUS, CARAVAN, TRAILER, TRAIN, MOTORCYCLE, BICYCLE = 26, 27, 28, 29, 30, 31, 32, 33

Rgb = np.ndarray
F32 = np.float32


@dataclass(frozen=True)
class CameraStyle:
    """What differs between the two data sets' cameras (a mild domain shift)."""

    horizon: tuple[float, float] = (0.38, 0.48)  # horizon row / H
    focal: tuple[float, float] = (1.05, 1.15)  # focal length / W
    cam_height: float = 1.5  # metres
    ego_prob: float = 1.0  # probability of a visible ego-vehicle bonnet
    ego_height: tuple[float, float] = (0.08, 0.12)  # bonnet height at the centre / H
    border_prob: float = 0.5  # rectification border columns
    tint: float = 0.04  # per-channel colour cast amplitude
    exposure: tuple[float, float] = (0.85, 1.15)
    dusk_prob: float = 0.0
    noise: tuple[float, float] = (0.008, 0.02)


CITYSCAPES_STYLE = CameraStyle()
BDD100K_STYLE = CameraStyle(
    horizon=(0.34, 0.52),
    focal=(0.85, 1.0),
    cam_height=1.35,
    ego_prob=0.45,
    ego_height=(0.05, 0.14),
    border_prob=0.0,
    tint=0.08,
    exposure=(0.7, 1.25),
    dusk_prob=0.15,
    noise=(0.01, 0.03),
)

# ------------------------------------------------------------------------------------ palettes

SKY_CLEAR = ((0.32, 0.52, 0.82), (0.72, 0.80, 0.90))  # zenith, horizon
SKY_OVERCAST = ((0.66, 0.69, 0.73), (0.80, 0.81, 0.83))
BUILDING_COLORS = np.array(
    [
        [0.62, 0.58, 0.52],
        [0.55, 0.55, 0.55],
        [0.56, 0.38, 0.30],
        [0.75, 0.72, 0.66],
        [0.42, 0.40, 0.38],
        [0.68, 0.60, 0.46],
        [0.50, 0.52, 0.56],
        [0.70, 0.66, 0.60],
    ],
    dtype=F32,
)
VEHICLE_COLORS = np.array(
    [
        [0.86, 0.86, 0.86],
        [0.07, 0.07, 0.08],
        [0.60, 0.61, 0.63],
        [0.36, 0.37, 0.39],
        [0.10, 0.14, 0.33],
        [0.62, 0.08, 0.07],
        [0.16, 0.30, 0.60],
        [0.14, 0.30, 0.18],
        [0.86, 0.70, 0.12],
        [0.70, 0.62, 0.48],
    ],
    dtype=F32,
)
VEHICLE_P = np.array([0.2, 0.18, 0.18, 0.12, 0.07, 0.08, 0.05, 0.03, 0.04, 0.05])
CLOTHES_COLORS = np.array(
    [
        [0.08, 0.08, 0.09],
        [0.30, 0.30, 0.32],
        [0.12, 0.15, 0.32],
        [0.85, 0.85, 0.83],
        [0.65, 0.12, 0.12],
        [0.20, 0.35, 0.65],
        [0.20, 0.38, 0.22],
        [0.42, 0.28, 0.18],
        [0.72, 0.64, 0.50],
        [0.80, 0.55, 0.15],
    ],
    dtype=F32,
)
PANTS_COLORS = np.array(
    [[0.12, 0.15, 0.30], [0.06, 0.06, 0.07], [0.33, 0.33, 0.35], [0.62, 0.56, 0.44]], dtype=F32
)
SKIN_COLORS = np.array(
    [[0.86, 0.68, 0.56], [0.66, 0.46, 0.33], [0.40, 0.27, 0.19], [0.92, 0.77, 0.67]], dtype=F32
)
VEGETATION_COLORS = np.array(
    [[0.22, 0.34, 0.12], [0.15, 0.25, 0.10], [0.33, 0.40, 0.15], [0.26, 0.36, 0.20]], dtype=F32
)
TERRAIN_COLORS = np.array([[0.42, 0.48, 0.24], [0.50, 0.45, 0.32], [0.38, 0.44, 0.22]], dtype=F32)
POLE_COLORS = np.array([[0.40, 0.42, 0.44], [0.22, 0.23, 0.23], [0.22, 0.30, 0.26]], dtype=F32)
BIKE_COLORS = np.array(
    [
        [0.08, 0.08, 0.08],
        [0.70, 0.10, 0.10],
        [0.15, 0.30, 0.65],
        [0.85, 0.85, 0.85],
        [0.20, 0.45, 0.25],
        [0.55, 0.55, 0.58],
    ],
    dtype=F32,
)
GLASS = np.array([0.13, 0.16, 0.20], dtype=F32)
TYRE = np.array([0.06, 0.06, 0.06], dtype=F32)
RIM = np.array([0.55, 0.56, 0.58], dtype=F32)
WHITE = np.array([0.92, 0.92, 0.90], dtype=F32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, gh: int, gw: int) -> np.ndarray:
    """Value noise: a (gh+1)x(gw+1) random grid, smoothstep-interpolated to h x w."""
    gh, gw = max(1, gh), max(1, gw)
    g = rng.standard_normal((gh + 1, gw + 1)).astype(F32)
    yi = np.linspace(0, gh, h, dtype=F32)
    xi = np.linspace(0, gw, w, dtype=F32)
    y0 = np.minimum(yi.astype(np.int64), gh - 1)
    x0 = np.minimum(xi.astype(np.int64), gw - 1)
    fy = (yi - y0)[:, None]
    fx = (xi - x0)[None, :]
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, octaves: list[tuple[int, int, float]]
) -> np.ndarray:
    n = sum(a * smooth_noise(rng, h, w, gh, gw) for gh, gw, a in octaves)
    return (n / (n.std() + 1e-6)).astype(F32)


def seg_dist(
    px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Distance of points (px, py) from the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


class Layers:
    """Label + colour layers of one object face, painted in order (later parts on top)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.lab = np.zeros(shape, dtype=np.uint8)
        self.rgb = np.zeros((*shape, 3), dtype=F32)

    def put(self, m: np.ndarray, lid: int, rgb: Rgb | np.ndarray) -> None:
        m = np.broadcast_to(m, self.lab.shape)
        self.lab[m] = lid
        self.rgb[m] = rgb if np.ndim(rgb) == 1 else rgb[m]


FaceFn = Callable[[np.ndarray, np.ndarray], Layers]


class Canvas:
    """The image being rendered: labelIds, linear colours, camera and noise fields."""

    def __init__(self, h: int, w: int, rng: np.random.Generator, style: CameraStyle) -> None:
        self.h, self.w, self.rng, self.style = h, w, rng, style
        self.lab = np.full((h, w), SKY, dtype=np.uint8)
        self.col = np.zeros((h, w, 3), dtype=F32)
        self.ys = np.arange(h, dtype=F32) + 0.5
        self.xs = np.arange(w, dtype=F32) + 0.5
        self.f = float(rng.uniform(*style.focal)) * w
        self.yh = float(rng.uniform(*style.horizon)) * h
        self.vx = float(rng.uniform(0.4, 0.6)) * w
        self.ch = style.cam_height
        self.fog = float(rng.uniform(150, 500))
        self.haze = np.array([0.75, 0.8, 0.86], dtype=F32)
        self.n_lo = fractal_noise(rng, h, w, [(2, 4, 1.0), (4, 8, 0.5), (8, 16, 0.25)])
        self.n_mid = fractal_noise(
            rng,
            h,
            w,
            [(max(2, h // 8), max(2, w // 8), 1.0), (max(2, h // 3), max(2, w // 3), 0.7)],
        )
        self.n_hi = rng.standard_normal((h, w)).astype(F32)

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def jitter(self, rgb: Rgb, amount: float = 0.08) -> Rgb:
        """An instance colour: `rgb` with a random brightness and a little per-channel change."""
        g = self.rng.uniform(1 - amount, 1 + amount)
        c = rgb * g * self.rng.uniform(1 - amount / 2, 1 + amount / 2, 3)
        return np.clip(c, 0, 1).astype(F32)

    def pick(self, palette: np.ndarray, p: np.ndarray | None = None, amount: float = 0.08) -> Rgb:
        return self.jitter(palette[self.rng.choice(len(palette), p=p)], amount)

    # -- painting ---------------------------------------------------------------------------

    def paint(
        self,
        y0: int,
        x0: int,
        m: np.ndarray,
        lid: int | np.ndarray,
        rgb: Rgb | np.ndarray,
        tex: tuple[float, float, float] = (0.06, 0.03, 0.03),
        z: float | np.ndarray | None = None,
    ) -> None:
        """Write label `lid` and colour `rgb` (with texture and distance haze) where `m` is set."""
        if not m.any():
            return
        sl = (slice(y0, y0 + m.shape[0]), slice(x0, x0 + m.shape[1]))
        n = 1.0 + tex[0] * self.n_lo[sl][m] + tex[1] * self.n_mid[sl][m] + tex[2] * self.n_hi[sl][m]
        c = (rgb if np.ndim(rgb) == 1 else rgb[m]) * n[:, None]
        if z is not None:
            hz = 1.0 - np.exp(-(z if np.ndim(z) == 0 else z[m]) / self.fog)
            hz = np.asarray(hz, dtype=F32)[..., None] if np.ndim(hz) else F32(hz)
            c = c * (1 - hz) + self.haze * hz
        self.col[sl][m] = c
        self.lab[sl][m] = lid if np.ndim(lid) == 0 else lid[m]

    # -- projection windows -----------------------------------------------------------------

    def _span(self, lo: float, hi: float, n: int) -> tuple[int, int]:
        """Pixels whose centres lie in [lo, hi]."""
        a = max(0, math.ceil(lo - 0.5))
        b = min(n, math.floor(hi - 0.5) + 1)
        return a, b

    def billboard(
        self,
        z: float,
        xl: float,
        xr: float,
        yb: float,
        yt: float,
        fn: FaceFn,
        tex: tuple[float, float, float] = (0.05, 0.03, 0.03),
    ) -> None:
        """A plane facing the camera at depth z spanning wx in [xl, xr], wy in [yb, yt].

        `fn(wx, wy)` gets local coordinates (wx relative to xl..xr as given, wy up from the ground)
        and returns the face's layers (label 0 = transparent).
        """
        if z <= 0.5:
            return
        x0, x1 = self._span(self.vx + self.f * xl / z, self.vx + self.f * xr / z, self.w)
        y0, y1 = self._span(
            self.yh + self.f * (self.ch - yt) / z, self.yh + self.f * (self.ch - yb) / z, self.h
        )
        if x1 <= x0 or y1 <= y0:
            return
        wx = ((self.xs[x0:x1] - self.vx) * (z / self.f))[None, :]
        wy = (self.ch - (self.ys[y0:y1] - self.yh) * (z / self.f))[:, None]
        lay = fn(wx, wy)
        self.paint(y0, x0, lay.lab > 0, lay.lab, lay.rgb, tex, z)

    def side_face(
        self,
        xs_plane: float,
        z0: float,
        z1: float,
        ytop: float,
        fn: FaceFn,
        tex: tuple[float, float, float] = (0.05, 0.03, 0.03),
    ) -> None:
        """The plane wx = xs_plane between depths z0..z1, heights 0..ytop; `fn(u, wy)` with
        u = wz - z0 (distance along the plane) and wy up from the ground."""
        if abs(xs_plane) < 1e-3 or z1 <= 0.5:
            return
        z0 = max(z0, 0.5)
        xa, xb = self.vx + self.f * xs_plane / z0, self.vx + self.f * xs_plane / z1
        x0, x1 = self._span(min(xa, xb), max(xa, xb), self.w)
        tops = [self.yh + self.f * (self.ch - ytop) / z for z in (z0, z1)]
        y0, y1 = self._span(min(tops), self.yh + self.f * self.ch / z0, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        dx = self.xs[x0:x1] - self.vx
        with np.errstate(divide="ignore"):
            wz = np.where(dx * xs_plane > 0, self.f * xs_plane / dx, -1.0).astype(F32)[None, :]
        wy = self.ch - (self.ys[y0:y1, None] - self.yh) * wz / self.f
        inside = (wz >= z0) & (wz <= z1) & (wy >= 0) & (wy <= ytop)
        if not inside.any():
            return
        lay = fn(wz - z0, wy)
        lay.lab[~inside] = 0
        self.paint(y0, x0, lay.lab > 0, lay.lab, lay.rgb, tex, np.broadcast_to(wz, lay.lab.shape))

    def horizontal(
        self, yp: float, x0m: float, x1m: float, z0: float, z1: float
    ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
        """Pixels of the horizontal rectangle wy = yp (< camera height), wx in [x0m, x1m],
        wz in [z0, z1]: (y0, x0, mask, wx, wz) or None."""
        if yp >= self.ch or z1 <= 0.5:
            return None
        z0 = max(z0, 0.5)
        d = self.ch - yp
        y0, y1 = self._span(self.yh + self.f * d / z1, self.yh + self.f * d / z0, self.h)
        xc = [self.vx + self.f * xm / z for xm in (x0m, x1m) for z in (z0, z1)]
        x0, x1 = self._span(min(xc), max(xc), self.w)
        if x1 <= x0 or y1 <= y0:
            return None
        wz = (self.f * d / np.maximum(self.ys[y0:y1] - self.yh, 1e-3))[:, None]
        wx = (self.xs[x0:x1] - self.vx)[None, :] * wz / self.f
        m = (wx >= x0m) & (wx <= x1m) & (wz >= z0) & (wz <= z1)
        return y0, x0, m, wx, wz

    def top_face(
        self, yp: float, x0m: float, x1m: float, z0: float, z1: float, lid: int, rgb: Rgb
    ) -> None:
        r = self.horizontal(yp, x0m, x1m, z0, z1)
        if r is not None:
            y0, x0, m, _, wz = r
            self.paint(y0, x0, m, lid, rgb, (0.04, 0.02, 0.02), np.broadcast_to(wz, m.shape))

    def shadow(self, x0m: float, x1m: float, z0: float, z1: float, factor: float) -> None:
        """Darken ground pixels under an object (labels unchanged)."""
        r = self.horizontal(0.0, x0m, x1m, z0, z1)
        if r is None:
            return
        y0, x0, m, _, _ = r
        sl = (slice(y0, y0 + m.shape[0]), slice(x0, x0 + m.shape[1]))
        lab = self.lab[sl]
        m = m & (
            (lab == ROAD)
            | (lab == SIDEWALK)
            | (lab == PARKING)
            | (lab == RAIL)
            | (lab == TERRAIN)
            | (lab == GROUND)
        )
        self.col[sl][m] *= factor


# ======================================================================================= scene


@dataclass
class Street:
    """The street layout in metres, camera at wx = 0 (right-hand traffic)."""

    a: float  # left road edge at wx = -a
    b: float  # right road edge at wx = +b
    swl: float  # sidewalk widths
    swr: float
    fl: float  # facade planes at wx = -fl and wx = +fr
    fr: float
    z_end: float  # end of the street (a facade across it, or open)
    inter: tuple[float, float] | None  # intersection depth band
    two_way: bool
    rail_x: float | None


def _street(cv: Canvas) -> Street:
    r = cv.rng
    b = cv.u(1.6, 2.4) if r.random() < 0.7 else cv.u(4.5, 5.5)  # a parking / bus lane
    lanes_left = int(r.choice([0, 1, 2, 3], p=[0.1, 0.4, 0.35, 0.15]))
    a = 1.8 + 3.3 * lanes_left + cv.u(-0.2, 0.6)
    swl, swr = cv.u(1.5, 4.0), cv.u(1.5, 4.0)
    tl = 0.0 if r.random() < 0.5 else cv.u(1.5, 6.0)
    tr = 0.0 if r.random() < 0.5 else cv.u(1.5, 6.0)
    inter = None
    if r.random() < 0.35:
        z0 = cv.u(14, 45)
        inter = (z0, z0 + cv.u(10, 18))
    z_end = cv.u(60, 220) if r.random() < 0.7 else 1e4
    rail = (-a / 2 if lanes_left else None) if r.random() < 0.06 else None
    return Street(
        a,
        b,
        swl,
        swr,
        a + swl + tl,
        b + swr + tr,
        z_end,
        inter,
        two_way=lanes_left > 0 and r.random() < 0.8,
        rail_x=rail,
    )


def _sky(cv: Canvas) -> None:
    overcast = cv.rng.random() < 0.35
    zen, hor = (np.array(c, dtype=F32) for c in (SKY_OVERCAST if overcast else SKY_CLEAR))
    zen, hor = cv.jitter(zen, 0.05), cv.jitter(hor, 0.04)
    t = np.clip(cv.ys / max(cv.yh, 1.0), 0, 1)[:, None, None] ** 0.7
    grad = zen * (1 - t) + hor * t
    clouds = np.clip(cv.n_lo + cv.u(-0.8, 0.6), 0, None)[..., None] * cv.u(0.05, 0.2)
    cv.col[:] = np.broadcast_to(grad, (cv.h, cv.w, 3)) + clouds
    cv.lab[:] = SKY
    cv.haze = hor * 0.95


def _skyline(cv: Canvas, st: Street) -> None:
    """Far buildings and tree lines on the horizon, piecewise along the columns."""
    cols = np.zeros(cv.w, dtype=F32)
    kind = np.zeros(cv.w, dtype=np.uint8)
    x = 0
    while x < cv.w:
        n = int(cv.rng.integers(max(2, cv.w // 30), max(3, cv.w // 6)))
        k = cv.rng.choice([BUILDING, VEGETATION, 0], p=[0.55, 0.3, 0.15])
        hgt = cv.u(0.01, 0.09) * cv.h if k else 0.0
        cols[x : x + n], kind[x : x + n] = hgt, k
        x += n
    bumps = np.abs(cv.n_mid[0]) * 0.02 * cv.h
    cols = np.where(kind == VEGETATION, cols + bumps, cols)
    top = cv.yh - cols
    m = (cv.ys[:, None] >= top[None, :]) & (cv.ys[:, None] < cv.yh + 1) & (kind[None, :] > 0)
    far = np.broadcast_to(kind[None, :], m.shape)
    bcol = cv.jitter(np.array([0.5, 0.52, 0.55], dtype=F32), 0.1)
    vcol = cv.pick(VEGETATION_COLORS)
    rgb = np.where((far == VEGETATION)[..., None], vcol, bcol)
    cv.paint(0, 0, m, far, rgb, (0.05, 0.1, 0.03), cv.u(250, 600))


def _ground(cv: Canvas, st: Street) -> tuple[np.ndarray, np.ndarray]:
    """Road, sidewalks, kerbs, markings, terrain beyond; returns per-pixel ground (wx, wz)."""
    r = cv.rng
    rows = cv.ys > cv.yh + 0.25
    y0 = int(np.argmax(rows)) if rows.any() else cv.h
    ys = cv.ys[y0:, None]
    wz = cv.f * cv.ch / (ys - cv.yh)
    wx = (cv.xs[None, :] - cv.vx) * wz / cv.f
    wz = np.broadcast_to(wz, wx.shape)
    px_per_m = cv.f / wz  # pixels per metre at that depth (for anti-aliased thin lines)

    def line(center: float | np.ndarray, width: float, coord: np.ndarray) -> np.ndarray:
        """Coverage (0..1) of a thin line along wz at wx = center (anti-aliased by width)."""
        wpx = width * px_per_m
        d = np.abs(coord - center) * px_per_m
        return np.clip(0.5 + (wpx / 2 - d), 0, 1) * np.clip(wpx * 2, 0, 1)

    lab = np.full(wx.shape, TERRAIN, dtype=np.uint8)
    outer_l = r.choice([TERRAIN, SIDEWALK, GROUND], p=[0.5, 0.4, 0.1])
    outer_r = r.choice([TERRAIN, SIDEWALK, GROUND], p=[0.5, 0.4, 0.1])
    lab[wx < 0] = outer_l
    lab[wx >= 0] = outer_r
    side_l = (wx >= -st.a - st.swl) & (wx < -st.a)
    side_r = (wx > st.b) & (wx <= st.b + st.swr)
    road = (wx >= -st.a) & (wx <= st.b)
    lab[side_l | side_r] = SIDEWALK
    if st.inter is not None:
        zi0, zi1 = st.inter
        band = (wz >= zi0) & (wz <= zi1)
        lab[band] = ROAD
        corner = ((wz < zi0 + 2.5) | (wz > zi1 - 2.5)) & band & ~road
        lab[corner & ~(side_l | side_r)] = SIDEWALK
        road = road | (band & ~corner)
    lab[road] = ROAD
    if r.random() < 0.15:  # a parking strip along the right kerb (void)
        pz0 = cv.u(6, 30)
        lab[(wx > st.b - 2.2) & (wx <= st.b) & (wz > pz0) & (pz0 + cv.u(8, 30) > wz)] = PARKING
    if st.rail_x is not None:
        lab[np.abs(wx - st.rail_x) < 0.8] = RAIL

    road_rgb = cv.jitter(np.full(3, cv.u(0.26, 0.5), dtype=F32), 0.05)
    walk_rgb = cv.jitter(np.full(3, cv.u(0.26, 0.5), dtype=F32), 0.05)  # same range: confusable
    park_rgb = cv.jitter(walk_rgb, 0.06)
    terr_rgb = cv.pick(TERRAIN_COLORS)
    ground_rgb = cv.jitter(np.array([0.45, 0.42, 0.36], dtype=F32))
    rgb = np.empty((*wx.shape, 3), dtype=F32)
    for lid, c in (
        (ROAD, road_rgb),
        (SIDEWALK, walk_rgb),
        (PARKING, park_rgb),
        (RAIL, road_rgb),
        (TERRAIN, terr_rgb),
        (GROUND, ground_rgb),
    ):
        rgb[lab == lid] = c

    # markings (label stays road): dashed lane lines, edge lines, crosswalk
    paint_amt = np.zeros(wx.shape, dtype=F32)
    dash = np.mod(wz, 9.0) < 3.0
    lane = st.b - 3.4
    k = 0
    while lane > -st.a + 0.5 and k < 6:
        solid = st.two_way and k == 0  # the centre line between the two directions
        paint_amt = np.maximum(paint_amt, line(lane, 0.14, wx) * (1.0 if solid else dash))
        lane -= 3.3
        k += 1
    if r.random() < 0.6:
        paint_amt = np.maximum(paint_amt, line(st.b - 0.35, 0.12, wx))
        paint_amt = np.maximum(paint_amt, line(-st.a + 0.35, 0.12, wx))
    if st.inter is not None and r.random() < 0.8:
        zc = st.inter[0]
        stripes = (np.mod(wx, 1.0) < 0.5) & (wz > zc - 4.0) & (wz < zc - 1.0)
        fade = np.clip(px_per_m * 0.5 - 0.5, 0, 1)
        paint_amt = np.maximum(paint_amt, stripes * fade)
    paint_amt *= lab == ROAD
    mark_rgb = WHITE if r.random() < 0.85 else np.array([0.85, 0.7, 0.2], dtype=F32)
    rgb = rgb * (1 - paint_amt[..., None]) + mark_rgb * 0.9 * paint_amt[..., None]

    # kerb stones (sidewalk label) and paving pattern
    kerb = np.maximum(line(-st.a - 0.1, 0.2, wx), line(st.b + 0.1, 0.2, wx)) * (lab == SIDEWALK)
    rgb *= (1 + 0.35 * kerb)[..., None]
    if r.random() < 0.5:
        tile = cv.u(0.3, 0.6)
        fade = np.clip(px_per_m * tile / 3 - 0.5, 0, 1)
        grid = ((np.mod(wx, tile) < 0.05) | (np.mod(wz, tile) < 0.05)) * fade
        rgb *= (1 - 0.15 * grid * (lab == SIDEWALK))[..., None]
    if st.rail_x is not None:
        rails = np.maximum(line(st.rail_x - 0.72, 0.08, wx), line(st.rail_x + 0.72, 0.08, wx))
        rgb = rgb * (1 - rails[..., None]) + RIM * rails[..., None]

    # a building shadow over part of the street
    if r.random() < 0.4:
        edge = cv.u(-st.a - st.swl, st.b)
        rgb *= np.where(edge > wx, cv.u(0.55, 0.8), 1.0).astype(F32)[..., None]

    tex = np.where(lab == TERRAIN, 0.25, 0.1).astype(F32)
    n = (1 + tex * cv.n_lo[y0:] + 0.5 * tex * cv.n_mid[y0:] + 0.06 * cv.n_hi[y0:]).astype(F32)
    rgb = rgb * n[..., None]
    hz = (1 - np.exp(-wz / cv.fog)).astype(F32)[..., None]
    cv.col[y0:] = rgb * (1 - hz) + cv.haze * hz
    cv.lab[y0:] = lab
    Xf = np.full((cv.h, cv.w), np.nan, dtype=F32)
    Zf = np.full((cv.h, cv.w), np.nan, dtype=F32)
    Xf[y0:], Zf[y0:] = wx, wz
    return Xf, Zf


@dataclass
class Segment:
    z0: float
    z1: float
    kind: str  # building | park | wall | fence | gap
    height: float
    low: float  # wall / fence height
    rgb: Rgb
    low_rgb: Rgb
    win: tuple[float, float, float, float]  # spacing, width, floor height, window height


def _segments(cv: Canvas, st: Street) -> list[Segment]:
    r = cv.rng
    segs, z = [], 0.5
    while z < min(st.z_end, 400):
        length = cv.u(8, 35)
        kind = str(r.choice(["building", "park", "wall", "fence"], p=[0.6, 0.14, 0.13, 0.13]))
        if st.inter is not None and z < st.inter[1] and z + length > st.inter[0]:
            if z < st.inter[0]:
                length = st.inter[0] - z
            else:
                length, kind = st.inter[1] - z, "gap"
        low = cv.u(1.0, 3.0) if kind == "wall" else cv.u(0.9, 2.0)
        above = 0.0 if r.random() < 0.4 else cv.u(0.5, 8.0)  # hedge / trees behind
        height = {"building": cv.u(6, 28), "park": cv.u(4, 14)}.get(kind, low + above)
        if kind == "wall":
            low_rgb = cv.pick(BUILDING_COLORS, amount=0.12)  # walls share the building palette
        else:
            low_rgb = cv.jitter(
                np.array(
                    r.choice([[0.45, 0.45, 0.45], [0.35, 0.42, 0.35], [0.45, 0.38, 0.30]]),
                    dtype=F32,
                )
            )
        segs.append(
            Segment(
                z,
                z + length,
                kind,
                height,
                low,
                cv.pick(BUILDING_COLORS, amount=0.12),
                low_rgb,
                (cv.u(2.5, 4.0), cv.u(0.8, 1.6), cv.u(2.8, 3.5), cv.u(1.2, 1.8)),
            )
        )
        z += length
    return segs


def _facade(cv: Canvas, st: Street, side: int, segs: list[Segment]) -> None:
    """The facade plane wx = side * F (side -1: left, +1: right), column by column."""
    F = st.fl if side < 0 else st.fr
    dx = side * (cv.xs - cv.vx)
    cols = np.flatnonzero(dx > 1e-3)
    if cols.size == 0 or not segs:
        return
    Zc = cv.f * F / dx[cols]
    ok = Zc < min(st.z_end, segs[-1].z1)
    cols, Zc = cols[ok], Zc[ok]
    if cols.size == 0:
        return
    bounds = np.array([s.z0 for s in segs] + [segs[-1].z1])
    idx = np.clip(np.searchsorted(bounds, Zc, side="right") - 1, 0, len(segs) - 1)
    kind = np.array([s.kind for s in segs])[idx]
    height = np.array([s.height for s in segs], dtype=F32)[idx]
    low = np.array([s.low for s in segs], dtype=F32)[idx]
    rgb_seg = np.stack([s.rgb for s in segs])[idx]
    low_rgb = np.stack([s.low_rgb for s in segs])[idx]
    win = np.array([s.win for s in segs], dtype=F32)[idx]
    veg_rgb = cv.pick(VEGETATION_COLORS)
    # vegetation tops are bumpy
    bump = 1.0 + 0.25 * np.sin(Zc * cv.u(0.3, 0.8) + cv.u(0, 6)) + 0.15 * cv.n_mid[0, cols]
    is_veg_top = (kind == "park") | (kind == "wall") | (kind == "fence")
    is_low = (kind == "wall") | (kind == "fence")
    height = np.where(is_veg_top, np.maximum(height * bump, 0), height)
    height = np.where(is_low, np.maximum(height, low), height)

    top_y = cv.yh + cv.f * (cv.ch - height) / Zc
    y0 = max(0, int(np.floor(top_y.min())))
    bot_y = cv.yh + cv.f * cv.ch / Zc
    y1 = min(cv.h, int(np.ceil(bot_y.max())) + 1)
    if y1 <= y0:
        return
    wy = cv.ch - (cv.ys[y0:y1, None] - cv.yh) * Zc[None, :] / cv.f  # (rows, cols)
    on = (wy >= 0) & (wy <= height[None, :]) & (kind != "gap")[None, :]
    lab = np.zeros(wy.shape, dtype=np.uint8)
    rgb = np.zeros((*wy.shape, 3), dtype=F32)
    bld = on & (kind == "building")[None, :]
    lab[bld] = BUILDING
    rgb[:] = rgb_seg[None]
    # windows, faded out where the pattern is finer than ~2 pixels
    sp, ww, fh, wh = (win[:, i][None, :] for i in range(4))
    pu = sp * cv.f * F / Zc[None, :] ** 2
    pv = fh * cv.f / Zc[None, :]
    vis = np.clip((np.minimum(pu, pv) - 1.5) / 2.0, 0, 1)
    wmask = (np.mod(Zc[None, :], sp) < ww) & (np.mod(wy - 0.9, fh) < wh) & (wy > 3.2)
    wmask &= height[None, :] - 0.8 > wy
    shop = (wy > 0.4) & (wy < 2.8) & (np.mod(Zc[None, :] + 1.0, sp * 2) < sp * 1.3)
    glass = (wmask | shop) & bld
    w_amt = (glass * vis * 0.75)[..., None]
    rgb = rgb * (1 - w_amt) + GLASS * w_amt
    cornice = bld & (wy > height[None, :] - 0.4)
    rgb[cornice] *= 0.8
    lowpart = on & ((kind == "wall") | (kind == "fence"))[None, :] & (wy <= low[None, :])
    lab[lowpart & (kind == "wall")[None, :]] = WALL
    lab[lowpart & (kind == "fence")[None, :]] = FENCE
    rgb = np.where(lowpart[..., None], low_rgb[None], rgb)
    fence = lowpart & (kind == "fence")[None, :]
    if fence.any():
        lattice = (np.mod(Zc[None, :], 0.25) < 0.06) | (np.mod(wy, 0.9) < 0.08)
        rgb[fence & ~lattice] *= 0.55
    veg = on & ~bld & ~lowpart
    lab[veg] = VEGETATION
    rgb[veg] = veg_rgb
    tex_amt = np.where(veg, 0.3, 0.08).astype(F32)
    n = (
        1
        + tex_amt * (cv.n_mid[y0:y1, cols] + 0.5 * cv.n_hi[y0:y1, cols])
        + 0.08 * cv.n_lo[y0:y1, cols]
    )
    rgb *= n[..., None]
    shade = cv.u(0.75, 1.05)  # facades facing the street get a side light
    rgb *= shade
    hz = (1 - np.exp(-Zc / cv.fog)).astype(F32)[None, :, None]
    rgb = rgb * (1 - hz) + cv.haze * hz
    m = lab > 0
    sub_lab = cv.lab[y0:y1, cols]
    sub_col = cv.col[y0:y1, cols]
    sub_lab[m] = lab[m]
    sub_col[m] = rgb[m]
    cv.lab[y0:y1, cols] = sub_lab
    cv.col[y0:y1, cols] = sub_col

    # the corner building's front face, seen through an intersection gap
    for prev, nxt in zip(segs, segs[1:], strict=False):
        if prev.kind == "gap" and nxt.kind == "building":
            zf, hgt, c = nxt.z0, nxt.height, cv.jitter(nxt.rgb * 0.85)
            xl, xr = (-F - 40.0, -F) if side < 0 else (F, F + 40.0)

            def corner(wx: np.ndarray, wy: np.ndarray, hgt: float = hgt, c: Rgb = c) -> Layers:
                lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
                lay.put(np.broadcast_to(hgt >= wy, lay.lab.shape), BUILDING, c)
                return lay

            cv.billboard(zf, xl, xr, 0.0, hgt, corner, (0.08, 0.04, 0.03))


def _end_of_street(cv: Canvas, st: Street) -> None:
    if st.z_end > 1e3:
        return
    z = st.z_end
    kind = cv.rng.choice(["building", "park"], p=[0.75, 0.25])
    c = cv.pick(BUILDING_COLORS) if kind == "building" else cv.pick(VEGETATION_COLORS)
    hgt = cv.u(8, 30)
    lid = BUILDING if kind == "building" else VEGETATION

    def face(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        hh = hgt * (1 + 0.3 * np.sin(wx * 0.15))
        lay.put(np.broadcast_to(hh >= wy, lay.lab.shape), lid, c)
        return lay

    tex = (0.08, 0.1, 0.03) if lid == BUILDING else (0.2, 0.3, 0.1)
    cv.billboard(z, -st.fl - 60, st.fr + 60, 0.0, hgt * 1.3, face, tex)


# ------------------------------------------------------------------------------------ objects


@dataclass
class Vehicle:
    kind: str  # car | van | truck | bus | train | caravan | trailer
    xc: float
    z0: float
    w: float
    h: float
    length: float
    toward: bool  # True: front faces the camera (oncoming)
    rgb: Rgb
    rgb2: Rgb  # cargo box / second colour

    @property
    def label(self) -> int:
        return {
            "car": CAR,
            "van": CAR,
            "truck": TRUCK,
            "bus": BUS,
            "train": TRAIN,
            "caravan": CARAVAN,
            "trailer": TRAILER,
        }[self.kind]


VEHICLE_DIMS = {  # width, height, length ranges (m)
    "car": ((1.7, 1.9), (1.35, 1.6), (3.8, 4.9)),
    "van": ((1.9, 2.05), (1.9, 2.2), (4.8, 5.6)),
    "truck": ((2.3, 2.5), (2.9, 3.8), (6.5, 10.0)),
    "bus": ((2.5, 2.55), (2.9, 3.3), (10.5, 13.0)),
    "train": ((2.5, 2.65), (3.3, 3.7), (25.0, 38.0)),
    "caravan": ((2.1, 2.3), (2.4, 2.8), (5.0, 7.0)),
    "trailer": ((1.6, 2.0), (1.0, 1.6), (2.5, 4.0)),
}


def _make_vehicle(cv: Canvas, kind: str, xc: float, z0: float, toward: bool) -> Vehicle:
    (w0, w1), (h0, h1), (l0, l1) = VEHICLE_DIMS[kind]
    rgb = cv.pick(VEHICLE_COLORS, VEHICLE_P)
    rgb2 = rgb if cv.rng.random() < 0.4 else cv.pick(VEHICLE_COLORS, VEHICLE_P)
    if kind in ("caravan", "trailer") and cv.rng.random() < 0.6:
        rgb = rgb2 = cv.jitter(WHITE * 0.9)
    return Vehicle(kind, xc, z0, cv.u(w0, w1), cv.u(h0, h1), cv.u(l0, l1), toward, rgb, rgb2)


def _wheels(
    lay: Layers, u: np.ndarray, wy: np.ndarray, centres: list[float], r: float, lid: int
) -> None:
    for c in centres:
        d = np.hypot(u - c, wy - r)
        lay.put(d < r, lid, TYRE)
        lay.put(d < r * 0.5, lid, RIM)


def _vehicle_side(v: Vehicle) -> FaceFn:
    L, h, lid = v.length, v.h, v.label

    def fn(u: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(u.shape, wy.shape))
        s = u / L if not v.toward else 1 - u / L  # s: 0 at the rear, 1 at the front
        if v.kind == "car":
            body = (wy >= 0.12 * h) & (wy <= 0.58 * h)
            t = (wy - 0.58 * h) / (0.42 * h)
            cabin = (wy > 0.58 * h) & (wy <= h) & (s >= 0.24 + 0.08 * t) & (s <= 0.80 - 0.17 * t)
            lay.put(body | cabin, lid, v.rgb)
            win = (wy > 0.63 * h) & (wy < 0.93 * h)
            win &= (s >= 0.28 + 0.08 * t) & (s <= 0.77 - 0.17 * t)
            win &= np.abs(s - 0.53) > 0.015
            lay.put(win, lid, GLASS)
            _wheels(lay, s * L, wy, [0.18 * L, 0.8 * L], 0.31, lid)
        elif v.kind == "van":
            body = (
                (wy >= 0.1 * h)
                & (wy <= 0.97 * h)
                & (s <= 0.98 - 0.12 * np.clip((wy - 0.5 * h) / (0.5 * h), 0, 1))
            )
            lay.put(body, lid, v.rgb)
            win = (
                (wy > 0.58 * h)
                & (wy < 0.88 * h)
                & (s > 0.62)
                & (s < 0.93 - 0.12 * ((wy - 0.5 * h) / (0.5 * h)))
            )
            lay.put(win, lid, GLASS)
            _wheels(lay, s * L, wy, [0.17 * L, 0.82 * L], 0.33, lid)
        elif v.kind == "truck":
            cab = s * L > L - 2.3
            box = (s * L < L - 2.45) & (wy >= 0.95) & (wy <= h)
            chassis = (wy >= 0.45) & (wy < 0.95) & (s * L < L - 2.3)
            cab_h = 0.78 * h
            cab_m = cab & (wy >= 0.4) & (wy <= cab_h)
            lay.put(box, lid, v.rgb2)
            lay.put(chassis, lid, TYRE * 2)
            lay.put(cab_m, lid, v.rgb)
            lay.put(cab & (wy > cab_h - 0.9) & (wy < cab_h - 0.15) & (s * L > L - 1.6), lid, GLASS)
            _wheels(lay, s * L, wy, [1.2, 2.5, L - 1.3], 0.5, lid)
        elif v.kind in ("bus", "train"):
            lay.put((wy >= 0.3) & (wy <= h), lid, v.rgb)
            pitch = 1.35 if v.kind == "bus" else 1.6
            band = (wy > 1.25) & (wy < h - 0.4) & (np.mod(s * L, pitch) > 0.12)
            band &= (s * L > 0.4) & (s * L < L - 0.4)
            lay.put(band, lid, GLASS)
            door = (
                (wy > 0.35)
                & (wy < h - 0.4)
                & ((np.abs(s * L - (L - 1.6)) < 0.6) | (np.abs(s * L - L / 2) < 0.6))
            )
            lay.put(door, lid, GLASS * 1.3)
            if v.kind == "bus":
                lay.put((wy > 0.9) & (wy < 1.1), lid, v.rgb2)  # a stripe
                _wheels(lay, s * L, wy, [2.6, L - 2.8], 0.5, lid)
            else:
                lay.put(wy < 0.55, lid, TYRE * 3)
        else:  # caravan / trailer
            lay.put((wy >= 0.35) & (wy <= h), lid, v.rgb)
            if v.kind == "caravan":
                lay.put((wy > 0.55 * h) & (wy < 0.8 * h) & (np.abs(s - 0.4) < 0.12), lid, GLASS)
            _wheels(lay, s * L, wy, [0.5 * L], 0.3, lid)
        return lay

    return fn


def _vehicle_near(v: Vehicle, part: str) -> FaceFn:
    """The face towards the camera, in local wx (centred) and wy."""
    hw, h, lid = v.w / 2, v.h, v.label
    tail = np.array([0.75, 0.05, 0.05], dtype=F32)
    head = np.array([0.95, 0.93, 0.8], dtype=F32)

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        ax = np.abs(wx)
        lamp = tail if not v.toward else head
        tyres = (ax > hw - 0.28) & (ax < hw - 0.03) & (wy < 0.35)
        if part == "car_body":
            lay.put(tyres, lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.12 * h) & (wy <= 0.58 * h), lid, v.rgb)
            lay.put((ax <= hw) & (wy >= 0.12 * h) & (wy < 0.22 * h), lid, v.rgb * 0.55)
            lamps = (ax > hw - 0.3) & (ax < hw - 0.05) & (wy > 0.42 * h) & (wy < 0.52 * h)
            lay.put(lamps, lid, lamp)
            lay.put((ax < 0.25) & (wy > 0.25 * h) & (wy < 0.32 * h), lid, WHITE)
            if v.toward:
                lay.put((ax < 0.35) & (wy > 0.33 * h) & (wy < 0.42 * h), lid, TYRE * 2)
        elif part == "car_cabin":
            t = (wy - 0.58 * h) / (0.42 * h)
            lay.put((wy > 0.55 * h) & (wy <= h) & (ax <= hw - 0.08 - 0.18 * t), lid, v.rgb)
            lay.put((wy > 0.62 * h) & (wy <= 0.93 * h) & (ax <= hw - 0.16 - 0.18 * t), lid, GLASS)
        elif part == "van":
            lay.put(tyres, lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.1 * h) & (wy <= 0.97 * h), lid, v.rgb)
            lay.put((ax <= hw - 0.12) & (wy > 0.58 * h) & (wy < 0.9 * h), lid, GLASS)
            lights = (ax > hw - 0.25) & (ax < hw - 0.05) & (wy > 0.35 * h) & (wy < 0.45 * h)
            lay.put(lights, lid, lamp)
        elif part == "truck_box":  # rear of the cargo box, or its front above the cab
            lay.put(tyres | ((ax < hw - 0.3) & (wy > 0.45) & (wy < 0.95)), lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.95) & (wy <= h), lid, v.rgb2)
            lay.put((ax < 0.03) & (wy >= 1.0) & (wy <= h - 0.1), lid, v.rgb2 * 0.6)
            lay.put((ax > hw - 0.3) & (ax < hw - 0.05) & (wy > 0.95) & (wy < 1.15), lid, lamp)
        elif part == "truck_cab":
            ch = 0.78 * h
            lay.put(tyres, lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.4) & (wy <= ch), lid, v.rgb)
            lay.put((ax <= hw - 0.12) & (wy > ch - 0.95) & (wy < ch - 0.12), lid, GLASS)
            lay.put((ax < hw - 0.4) & (wy > 0.7) & (wy < 1.2), lid, TYRE * 2.5)
            lay.put((ax > hw - 0.35) & (ax < hw - 0.08) & (wy > 0.6) & (wy < 0.8), lid, lamp)
        elif part in ("bus", "train"):
            lay.put(tyres, lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.3) & (wy <= h), lid, v.rgb)
            if v.toward:
                lay.put((ax <= hw - 0.1) & (wy > 1.1) & (wy < h - 0.45), lid, GLASS)
                lay.put(
                    (ax < 0.9) & (wy > h - 0.4) & (wy < h - 0.12),
                    lid,
                    np.array([0.95, 0.6, 0.1], dtype=F32),
                )
            else:
                lay.put((ax <= hw - 0.15) & (wy > h - 1.3) & (wy < h - 0.35), lid, GLASS)
            lay.put((ax > hw - 0.35) & (ax < hw - 0.08) & (wy > 0.5) & (wy < 0.8), lid, lamp)
        else:  # caravan / trailer rear
            lay.put(tyres, lid, TYRE)
            lay.put((ax <= hw) & (wy >= 0.35) & (wy <= h), lid, v.rgb)
            lay.put((ax > hw - 0.25) & (ax < hw - 0.05) & (wy > 0.4) & (wy < 0.55), lid, tail)
        return lay

    return fn


def draw_vehicle(cv: Canvas, v: Vehicle) -> None:
    x0, x1 = v.xc - v.w / 2, v.xc + v.w / 2
    z0, z1 = v.z0, v.z0 + v.length
    cv.shadow(x0 - 0.15, x1 + 0.15, z0 - 0.3, z1, cv.u(0.35, 0.6))
    if x1 < 0:
        cv.side_face(x1, z0, z1, v.h, _vehicle_side(v))
    elif x0 > 0:
        cv.side_face(x0, z0, z1, v.h, _vehicle_side(v))
    near, hw = _vehicle_near, v.w / 2
    if v.kind == "car":
        c_off = (0.24 if not v.toward else 0.20) * v.length
        cv.top_face(
            v.h, x0 + 0.25, x1 - 0.25, z0 + c_off + 0.4, z0 + 0.6 * v.length, v.label, v.rgb * 1.1
        )
        _bb(cv, z0 + c_off, v.xc, hw, v.h, near(v, "car_cabin"))
        cv.top_face(0.58 * v.h, x0, x1, z0, z0 + c_off, v.label, v.rgb * 1.15)
        _bb(cv, z0, v.xc, hw, 0.6 * v.h, near(v, "car_body"))
    elif v.kind == "truck":
        if v.toward:
            _bb(cv, z0 + 2.3, v.xc, hw, v.h, near(v, "truck_box"))
            _bb(cv, z0, v.xc, hw, 0.78 * v.h, near(v, "truck_cab"))
        else:
            _bb(cv, z0, v.xc, hw, v.h, near(v, "truck_box"))
    else:
        part = {"van": "van", "bus": "bus", "train": "train"}.get(v.kind, "other")
        _bb(cv, z0, v.xc, hw, v.h, near(v, part))


def _shifted(fn: FaceFn, xc: float) -> FaceFn:
    """Billboard coordinates are camera-relative; faces are drawn in object-centred wx."""
    return lambda wx, wy: fn(wx - xc, wy)


def _bb(
    cv: Canvas,
    z: float,
    xc: float,
    half: float,
    top: float,
    fn: FaceFn,
    tex: tuple[float, float, float] = (0.05, 0.03, 0.03),
) -> None:
    cv.billboard(z, xc - half, xc + half, 0.0, top, _shifted(fn, xc), tex)


def _person_layers(
    lay: Layers,
    wx: np.ndarray,
    wy: np.ndarray,
    h: float,
    lid: int,
    c: dict[str, Rgb],
    spread: float,
) -> None:
    """A standing pedestrian centred at wx = 0, height h."""
    head_y = h - 0.12
    legs_top = 0.52 * h
    t = np.clip((legs_top - wy) / legs_top, 0, 1)
    for sgn in (-1, 1):
        leg = (np.abs(wx - sgn * (0.07 + spread * t)) < 0.075) & (wy <= legs_top) & (wy >= 0)
        lay.put(leg, lid, c["pants"])
        lay.put(leg & (wy < 0.07), lid, TYRE)
    arm = (np.abs(np.abs(wx) - 0.23) < 0.045) & (wy > 0.45 * h) & (wy < h - 0.27)
    lay.put(arm, lid, c["shirt"])
    lay.put(arm & (wy < 0.5 * h), lid, c["skin"])
    torso_bottom = 0.5 * h if not c.get("coat") else 0.33 * h
    lay.put((np.abs(wx) < 0.19) & (wy >= torso_bottom) & (wy <= h - 0.22), lid, c["shirt"])
    lay.put((np.abs(wx) < 0.05) & (wy > h - 0.26) & (wy <= h - 0.2), lid, c["skin"])
    head = (wx / 0.1) ** 2 + ((wy - head_y) / 0.125) ** 2 < 1
    lay.put(head, lid, c["skin"])
    lay.put(head & (wy > head_y + 0.03), lid, c["hair"])


def _clothes(cv: Canvas) -> dict[str, Rgb]:
    return {
        "shirt": cv.pick(CLOTHES_COLORS, amount=0.15),
        "pants": cv.pick(PANTS_COLORS, amount=0.15),
        "skin": cv.pick(SKIN_COLORS, amount=0.05),
        "hair": cv.jitter(
            np.array(
                cv.rng.choice([[0.08, 0.06, 0.05], [0.3, 0.2, 0.1], [0.5, 0.45, 0.35]]), dtype=F32
            )
        ),
        "coat": bool(cv.rng.random() < 0.25),
    }


def draw_person(cv: Canvas, xc: float, z: float) -> None:
    h, c, spread = cv.u(1.5, 1.95), _clothes(cv), cv.u(0.0, 0.12)

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        _person_layers(lay, wx, wy, h, PERSON, c, spread)
        return lay

    _bb(cv, z, xc, 0.35, h, fn)


def draw_two_wheeler(cv: Canvas, xc: float, z: float, motor: bool, ridden: bool) -> None:
    """A bicycle or motorcycle in side view, optionally with its rider (rider label)."""
    d = 1.0 if cv.rng.random() < 0.5 else -1.0
    lid = MOTORCYCLE if motor else BICYCLE
    frame = cv.pick(VEHICLE_COLORS, VEHICLE_P) if motor else cv.pick(BIKE_COLORS)
    c = _clothes(cv)
    if motor:
        c["hair"] = cv.pick(CLOTHES_COLORS)  # helmet
    r_w = 0.32 if motor else 0.34
    hub = 0.7 if motor else 0.53
    seat = (-0.2, 0.82) if motor else (-0.15, 0.9)
    bar = (0.45, 1.0) if motor else (0.38, 1.0)
    top = 1.75 if ridden else 1.1

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        u = wx * d
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        for cx in (-hub, hub):
            dist = np.hypot(u - cx, wy - r_w)
            if motor:
                lay.put(dist < r_w, lid, TYRE)
                lay.put(dist < r_w * 0.5, lid, RIM)
            else:
                lay.put(np.abs(dist - r_w + 0.03) < 0.035, lid, TYRE)
        if motor:
            lay.put(((u / 0.55) ** 2 + ((wy - 0.62) / 0.2) ** 2) < 1, lid, frame)
            lay.put((u > -0.25) & (u < 0.25) & (wy > 0.25) & (wy < 0.5), lid, RIM * 0.5)
            lay.put((u > -0.6) & (u < -0.05) & (wy > 0.76) & (wy < 0.86), lid, TYRE)
            lay.put(seg_dist(u, wy, (hub, r_w), bar) < 0.04, lid, RIM)
        else:
            bbk = (0.0, 0.3)
            for a, b in (
                ((-hub, r_w), bbk),
                (bbk, seat),
                (seat, (-hub, r_w)),
                (seat, bar),
                (bar, (hub, r_w)),
                (bbk, bar),
            ):
                lay.put(seg_dist(u, wy, a, b) < 0.025, lid, frame)
            lay.put((np.abs(u - seat[0]) < 0.1) & (np.abs(wy - seat[1]) < 0.03), lid, TYRE)
        if ridden:
            hip = (seat[0], seat[1] + 0.05)
            shoulder = (seat[0] + 0.22, seat[1] + 0.55)
            knee = (seat[0] + 0.35, seat[1] - 0.05)
            foot = (0.05, 0.3)
            lay.put(seg_dist(u, wy, hip, knee) < 0.075, RIDER, c["pants"])
            lay.put(seg_dist(u, wy, knee, foot) < 0.065, RIDER, c["pants"])
            lay.put(seg_dist(u, wy, hip, shoulder) < 0.17, RIDER, c["shirt"])
            lay.put(seg_dist(u, wy, shoulder, bar) < 0.045, RIDER, c["shirt"])
            hc = (shoulder[0] + 0.04, shoulder[1] + 0.2)
            head = np.hypot(u - hc[0], wy - hc[1]) < (0.13 if motor else 0.11)
            lay.put(head, RIDER, c["skin"])
            lay.put(head & ((wy > hc[1] + 0.02) | motor), RIDER, c["hair"])
        return lay

    _bb(cv, z, xc, hub + r_w + 0.1, top, fn)


def draw_pole(cv: Canvas, xc: float, z: float, st: Street, kind: str) -> None:
    """A pole (street light, sign post or traffic-light post) with what hangs on it."""
    rgb = cv.pick(POLE_COLORS)
    toward_road = 1.0 if xc < 0 else -1.0
    w = max(cv.u(0.12, 0.25), 1.1 * z / cv.f)  # at least about a pixel wide
    hp = {
        "light": cv.u(6.5, 9.0),
        "sign": cv.u(2.6, 3.6),
        "tl": cv.u(3.5, 5.0),
        "overhead": cv.u(5.5, 6.5),
    }[kind]
    arm = cv.u(1.0, 2.0) if kind == "light" else (cv.u(3.0, 6.0) if kind == "overhead" else 0.0)
    sign_shape = cv.rng.choice(["circle", "triangle", "rect", "back"])
    sign_rgb = {
        "circle": np.array([0.8, 0.1, 0.1], dtype=F32),
        "triangle": np.array([0.85, 0.1, 0.1], dtype=F32),
        "rect": np.array([0.1, 0.3, 0.7], dtype=F32),
        "back": np.array([0.55, 0.55, 0.55], dtype=F32),
    }[sign_shape]
    inner = WHITE if cv.rng.random() < 0.7 else np.array([0.15, 0.35, 0.75], dtype=F32)
    lamp_on = int(cv.rng.integers(0, 3))
    house = cv.jitter(
        np.array([0.1, 0.1, 0.1], dtype=F32)
        if cv.rng.random() < 0.7
        else np.array([0.6, 0.55, 0.2], dtype=F32)
    )
    backside = cv.rng.random() < 0.25
    sr = cv.u(0.3, 0.4)

    def traffic_light(lay: Layers, wx: np.ndarray, wy: np.ndarray, cx: float, cy: float) -> None:
        box = (np.abs(wx - cx) < 0.17) & (np.abs(wy - cy) < 0.45)
        lay.put(box, LIGHT, house)
        if not backside:
            for i, col in enumerate(([0.9, 0.1, 0.05], [0.95, 0.65, 0.05], [0.1, 0.85, 0.3])):
                ly = cy + 0.28 - 0.28 * i
                lamp = np.hypot(wx - cx, wy - ly) < 0.1
                lay.put(lamp, LIGHT, np.array(col, dtype=F32) * (1.0 if i == lamp_on else 0.25))

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        lay.put((np.abs(wx) < w / 2) & (wy <= hp), POLE, rgb)
        if arm:
            ax = wx * toward_road
            lay.put((ax >= 0) & (ax <= arm) & (np.abs(wy - hp + 0.1) < max(0.08, w / 2)), POLE, rgb)
        if kind == "light":
            ax = wx * toward_road
            lay.put((np.abs(ax - arm) < 0.3) & (wy > hp - 0.3) & (wy < hp), POLE, rgb * 1.3)
        elif kind == "sign":
            cy = hp - sr
            if sign_shape in ("circle", "back"):
                d = np.hypot(wx, wy - cy)
                lay.put(d < sr, SIGN, sign_rgb)
                if sign_shape == "circle":
                    lay.put(d < sr * 0.72, SIGN, inner)
            elif sign_shape == "triangle":
                tri = (wy > cy - sr) & (np.abs(wx) < (cy + sr - wy) * 0.6)
                lay.put(tri, SIGN, sign_rgb)
                lay.put(
                    tri & (wy > cy - sr * 0.7) & (np.abs(wx) < (cy + sr * 0.6 - wy) * 0.5),
                    SIGN,
                    WHITE,
                )
            else:
                lay.put((np.abs(wx) < sr) & (np.abs(wy - cy) < sr * 0.8), SIGN, sign_rgb)
                lay.put((np.abs(wx) < sr * 0.3) & (np.abs(wy - cy) < sr * 0.5), SIGN, WHITE)
        elif kind == "tl":
            traffic_light(lay, wx, wy, 0.3 * toward_road, hp - 0.8)
        elif kind == "overhead":
            for k in (0.6, 0.95):
                traffic_light(lay, wx, wy, toward_road * arm * k, hp - 0.65)
        return lay

    reach = max(arm, 0.6) + 0.5
    cv.billboard(z, xc - reach, xc + reach, 0.0, hp + 0.2, _shifted(fn, xc), (0.04, 0.02, 0.03))


def draw_tree(cv: Canvas, xc: float, z: float) -> None:
    trunk_h, rad = cv.u(1.8, 3.2), cv.u(1.2, 3.0)
    ry = rad * cv.u(0.9, 1.3)
    cy = trunk_h + ry * 0.85
    c, bark = cv.pick(VEGETATION_COLORS, amount=0.15), np.array([0.25, 0.2, 0.15], dtype=F32)
    ph = cv.rng.uniform(0, 6.28, 3)

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        lay.put((np.abs(wx) < 0.16) & (wy <= cy), VEGETATION, bark)
        ang = np.arctan2(wy - cy, wx)
        edge = (
            1
            + 0.12 * np.sin(3 * ang + ph[0])
            + 0.08 * np.sin(7 * ang + ph[1])
            + 0.05 * np.sin(13 * ang + ph[2])
        )
        lay.put(((wx / rad) ** 2 + ((wy - cy) / ry) ** 2) < edge**2, VEGETATION, c)
        return lay

    _bb(cv, z, xc, rad * 1.3, cy + ry * 1.3, fn, (0.2, 0.45, 0.15))


def draw_clutter(cv: Canvas, xc: float, z: float, lid: int) -> None:
    """Void objects: a bin or bollard (static) or a cart (dynamic)."""
    w, h = (cv.u(0.3, 0.7), cv.u(0.8, 1.2)) if lid == STATIC else (cv.u(0.6, 1.0), cv.u(0.8, 1.1))
    c = cv.pick(POLE_COLORS) if lid == STATIC else cv.pick(CLOTHES_COLORS)

    def fn(wx: np.ndarray, wy: np.ndarray) -> Layers:
        lay = Layers(np.broadcast_shapes(wx.shape, wy.shape))
        lay.put((np.abs(wx) < w / 2) & (wy <= h), lid, c)
        return lay

    _bb(cv, z, xc, w, h, fn)


def _place_objects(cv: Canvas, st: Street) -> list[tuple[float, Callable[[], None]]]:
    """Every object as (depth for painter's order, draw function)."""
    r, objs = cv.rng, []
    zmax = min(st.z_end - 2, 150.0)

    def add(z: float, fn: Callable[[], None]) -> None:
        if 1.0 < z < zmax:
            objs.append((z, fn))

    # moving vehicles in lanes
    lane = st.b - 1.7
    i = 0
    while lane > -st.a + 1.0:
        toward = st.two_way and lane < st.b - 3.4
        if st.rail_x is not None and abs(lane - st.rail_x) < 1.6:
            lane -= 3.3
            continue
        z = cv.u(8, 35) if i == 0 else cv.u(3, 30)
        density = cv.u(0.2, 0.8)
        while z < zmax:
            kind = str(
                r.choice(
                    ["car", "van", "truck", "bus", "trailer"], p=[0.83, 0.08, 0.04, 0.035, 0.015]
                )
            )
            v = _make_vehicle(cv, kind, lane + cv.u(-0.3, 0.3), z, toward)
            add(z, lambda v=v: draw_vehicle(cv, v))
            z += v.length + cv.u(4, 40) / density
        lane -= 3.3
        i += 1
    if st.rail_x is not None:
        v = _make_vehicle(cv, "train", st.rail_x, cv.u(12, 60), bool(r.random() < 0.5))
        add(v.z0, lambda v=v: draw_vehicle(cv, v))
    # parked vehicles along the kerbs
    for side in (-1, 1):
        if r.random() < 0.4:
            edge = -st.a if side < 0 else st.b
            if side > 0 and st.b < 4.0:
                continue  # no room on the right of the camera's lane
            xc = edge - side * 1.1
            z = cv.u(4, 20)
            while z < min(zmax, 90):
                kind = str(r.choice(["car", "van", "caravan", "truck"], p=[0.82, 0.1, 0.05, 0.03]))
                v = _make_vehicle(cv, kind, xc, z, bool(r.random() < 0.5))
                add(z, lambda v=v: draw_vehicle(cv, v))
                z += v.length + cv.u(0.8, 12)

    def on_sidewalk(side: int) -> float:
        edge, sw = (-st.a, st.swl) if side < 0 else (st.b, st.swr)
        return edge + side * cv.u(0.4, sw - 0.3)

    # pedestrians on the sidewalks, some crossing at the intersection
    for _ in range(int(r.poisson(3.0))):
        side = int(r.choice([-1, 1]))
        z = cv.u(4, 60)
        xc = on_sidewalk(side)
        add(z, lambda xc=xc, z=z: draw_person(cv, xc, z))
        if r.random() < 0.3:  # a companion
            xc2, z2 = xc + cv.u(-0.8, 0.8), z + cv.u(-0.5, 0.8)
            add(z2, lambda xc=xc2, z=z2: draw_person(cv, xc, z))
    if st.inter is not None and r.random() < 0.5:
        for _ in range(int(r.integers(1, 4))):
            z, xc = st.inter[0] - cv.u(1.5, 3.5), cv.u(-st.a, st.b + 2)
            add(z, lambda xc=xc, z=z: draw_person(cv, xc, z))
    # riders on the road, parked two-wheelers on the sidewalk
    if r.random() < 0.45:
        for _ in range(int(r.integers(1, 3))):
            motor = bool(r.random() < 0.35)
            xc = st.b - cv.u(0.6, 1.2) if r.random() < 0.6 else cv.u(-st.a + 0.8, st.b - 0.8)
            z = cv.u(5, 45)
            add(z, lambda xc=xc, z=z, m=motor: draw_two_wheeler(cv, xc, z, m, True))
    if r.random() < 0.3:
        side = int(r.choice([-1, 1]))
        z, motor = cv.u(5, 40), bool(r.random() < 0.3)
        for _ in range(int(r.integers(1, 4))):
            xc = on_sidewalk(side)
            add(z, lambda xc=xc, z=z, m=motor: draw_two_wheeler(cv, xc, z, m, False))
            z += cv.u(0.6, 1.2)
    # poles along the kerbs; traffic lights at the intersection
    for side in (-1, 1):
        edge = -st.a if side < 0 else st.b
        z = cv.u(3, 25)
        spacing = cv.u(18, 40)
        while z < zmax:
            kind = str(r.choice(["light", "sign", "sign", "tl"], p=[0.45, 0.25, 0.2, 0.1]))
            xc = edge + side * cv.u(0.35, 0.8)
            add(z, lambda xc=xc, z=z, k=kind: draw_pole(cv, xc, z, st, k))
            z += spacing * cv.u(0.6, 1.4)
    if st.inter is not None:
        zc = st.inter[0] - 0.5
        for side in (-1, 1):
            edge = -st.a if side < 0 else st.b
            kind = "overhead" if (side > 0 and r.random() < 0.5) else "tl"
            add(zc, lambda xc=edge + side * 0.5, k=kind: draw_pole(cv, xc, zc, st, k))
    elif r.random() < 0.3:
        z = cv.u(25, 80)
        add(z, lambda z=z: draw_pole(cv, st.b + 0.5, z, st, "overhead"))
    # trees on the sidewalks / verges
    for side in (-1, 1):
        if r.random() < 0.5:
            F = st.fl if side < 0 else st.fr
            xc = side * (F - cv.u(0.8, 1.5))
            z = cv.u(4, 15)
            while z < zmax:
                add(z, lambda xc=xc, z=z: draw_tree(cv, xc, z))
                z += cv.u(7, 18)
    # void clutter
    for _ in range(int(r.poisson(1.2))):
        side = int(r.choice([-1, 1]))
        z, xc = cv.u(4, 40), on_sidewalk(side)
        lid = STATIC if r.random() < 0.8 else DYNAMIC
        add(z, lambda xc=xc, z=z, lid=lid: draw_clutter(cv, xc, z, lid))
    return objs


def _ego(cv: Canvas) -> None:
    st = cv.style
    if cv.rng.random() >= st.ego_prob:
        return
    eh = cv.u(*st.ego_height) * cv.h
    cx = cv.u(0.45, 0.55) * cv.w
    curv = cv.u(0.4, 0.9)
    top = cv.h - eh * (1 - curv * ((cv.xs - cx) / (cv.w / 2)) ** 2)
    m = cv.ys[:, None] >= top[None, :]
    paint = cv.pick(VEHICLE_COLORS, VEHICLE_P, 0.05) * 0.7
    t = np.clip((cv.ys[:, None] - top[None, :]) / max(eh, 1.0), 0, 1)
    rgb = paint * (0.6 + 0.8 * (1 - t))[..., None] + cv.haze * 0.25 * (1 - t)[..., None]
    cv.paint(0, 0, m, EGO, rgb.astype(F32), (0.02, 0.0, 0.01))


def _finish(cv: Canvas) -> np.ndarray:
    st, r = cv.style, cv.rng
    img = cv.col
    # mild optical blur
    pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blur = (pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:] + 4 * img) / 8
    img = 0.5 * img + 0.5 * blur
    # exposure, colour cast, vignetting, dusk, sensor noise
    img = img * cv.u(*st.exposure) * (1 + r.uniform(-st.tint, st.tint, 3)).astype(F32)
    yy = (cv.ys[:, None] / cv.h - 0.5) * 2
    xx = (cv.xs[None, :] / cv.w - 0.5) * 2
    img = img * (1 - cv.u(0.0, 0.3) * (xx**2 + yy**2) / 2)[..., None]
    if r.random() < st.dusk_prob:
        img = img * cv.u(0.35, 0.6) * np.array([0.85, 0.9, 1.1], dtype=F32)
    img = img + r.normal(0, cv.u(*st.noise), img.shape).astype(F32)
    return (np.clip(img, 0, 1) ** (1 / cv.u(0.9, 1.1)) * 255 + 0.5).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, height: int, width: int, style: CameraStyle = CITYSCAPES_STYLE
) -> tuple[np.ndarray, np.ndarray]:
    """One driving scene: (HxWx3 uint8 RGB image, HxW uint8 Cityscapes labelIds)."""
    cv = Canvas(height, width, rng, style)
    st = _street(cv)
    _sky(cv)
    _skyline(cv, st)
    _ground(cv, st)
    _end_of_street(cv, st)
    for side in (-1, 1):
        _facade(cv, st, side, _segments(cv, st))
    objs = _place_objects(cv, st)
    for _, draw in sorted(objs, key=lambda o: -o[0]):
        draw()
    _ego(cv)
    if rng.random() < style.border_prob:
        bw = max(1, width // 200)
        cv.lab[:, :bw] = RECT_BORDER
        cv.lab[:, -bw:] = RECT_BORDER
        cv.col[:, :bw] = 0.0
        cv.col[:, -bw:] = 0.0
    return _finish(cv), cv.lab
