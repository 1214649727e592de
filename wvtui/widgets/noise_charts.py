"""The noise pane's two charts: the histogram of normalised per-sample losses with the fitted
two-component mixture and its 0.5 cut, and the estimated clean fraction over epochs."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from core.events import NoiseEstimate

CURVE_POINTS = 200
# A component fitted to a tight cluster can peak far above the bars; past this multiple of the
# tallest bar its curve is cut off so the bars stay readable.
CURVE_HEADROOM = 1.25
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
CLEAN, NOISY = 0, 1  # the order of NoiseEstimate's pairs


def component_density(x: np.ndarray, mean: float, variance: float, weight: float) -> np.ndarray:
    """weight x the normal density at x (variance floored: a degenerate fit is a spike, not an error)."""
    var = max(float(variance), 1e-12)
    return weight * np.exp(-((x - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def clean_cut(means: Sequence[float], variances: Sequence[float], weights: Sequence[float]) -> float | None:
    """The normalised loss in [0, 1] where the clean component's posterior falls to 0.5 (the
    first crossing from clean to noisy at or above the clean mean); None when it never does."""
    xs = np.linspace(0.0, 1.0, 4001)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        clean = component_density(xs, means[CLEAN], variances[CLEAN], weights[CLEAN])
        noisy = component_density(xs, means[NOISY], variances[NOISY], weights[NOISY])
        margin = clean - noisy
    above = margin > 0
    crossings = np.flatnonzero(above[:-1] & ~above[1:])
    if len(crossings) == 0:
        return None
    after_mean = crossings[xs[crossings] >= min(means[CLEAN], 1.0) - 1e-9]
    i = int(after_mean[0] if len(after_mean) else crossings[0])
    # Linear interpolation between the two grid points around the sign change.
    m0, m1 = margin[i], margin[i + 1]
    t = m0 / (m0 - m1) if m0 != m1 else 0.0
    return float(xs[i] + t * (xs[i + 1] - xs[i]))


def mixture_curves(estimate: NoiseEstimate, total: int, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, clean and noisy curves scaled to histogram counts (total samples in `bins` bins over [0, 1])."""
    xs = np.linspace(0.0, 1.0, CURVE_POINTS)
    scale = total / bins  # counts per bin = total x bin width x density
    curves = [scale * component_density(xs, estimate.means[k], estimate.variances[k], estimate.weights[k])
              for k in (CLEAN, NOISY)]
    return xs, curves[CLEAN], curves[NOISY]


def draw_histogram(plt, histogram: Sequence[int] | None, estimate: NoiseEstimate | None) -> None:
    """Into a blank plotext figure: bars of counts, the clean (green) and noisy (red) components, the cut."""
    if estimate is None:
        plt.title("the noise split appears after the first epoch")
        return
    bins = len(histogram) if histogram else 40
    total = int(sum(histogram)) if histogram else estimate.samples
    top = max(histogram) if histogram else 0
    if histogram:
        width = 1.0 / bins
        plt.bar([(i + 0.5) * width for i in range(bins)], list(histogram), width=0.8, marker="sd", color="blue")
    xs, clean, noisy = mixture_curves(estimate, total, bins)
    if top:
        clean = np.minimum(clean, top * CURVE_HEADROOM)
        noisy = np.minimum(noisy, top * CURVE_HEADROOM)
    plt.plot(xs.tolist(), clean.tolist(), marker="braille", color="green", label="clean")
    plt.plot(xs.tolist(), noisy.tolist(), marker="braille", color="red", label="noisy")
    cut = clean_cut(estimate.means, estimate.variances, estimate.weights)
    if cut is not None:
        plt.vline(cut, "yellow")
    plt.xlim(0, 1)
    plt.xticks(TICKS, [f"{t:g}" for t in TICKS])
    plt.xlabel("normalised loss" + (f" (cut {cut:.2f})" if cut is not None else ""))
    plt.title(f"epoch {estimate.epoch}: losses and the 2-component fit")


def draw_clean_fraction(plt, estimates: Sequence[NoiseEstimate]) -> None:
    """Into a blank plotext figure: the estimated clean fraction (%) per epoch."""
    if not estimates:
        plt.title("clean % per epoch")
        return
    xs = [ev.epoch for ev in estimates]
    ys = [100.0 * ev.clean_fraction for ev in estimates]
    plt.plot(xs, ys, marker="braille", color="green")
    plt.scatter(xs, ys, marker="dot", color="green")
    plt.ylim(0, 100)
    # Whole epochs only, at most about six of them.
    every = max(1, math.ceil(len(set(xs)) / 6))
    ticks = sorted(set(xs))[::every]
    plt.xticks(ticks, [str(t) for t in ticks])
    plt.xlabel("epoch")
    plt.title("clean %")
