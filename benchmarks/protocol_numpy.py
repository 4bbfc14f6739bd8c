"""The study's experiment 1 the study's way: NumPy, one seed at a time.

    python benchmarks/protocol_numpy.py --seeds 256

Per PROTOCOLS.md: 100 samples, inputs and targets N(0, 1), width 64; plain networks (D layers,
He-normal, zero bias, ReLU after all but the last) and residual networks (He-normal projection
and ReLU, D // 2 post-activation blocks, Xavier-normal (seed) output projection) at depths 5,
10, 20, 50, 100; loss 0.5 * sum of squares / 100; per-layer (per-block: ||dW1|| + ||dW2||)
weight-gradient norms by a hand-written backward pass, and first / (last + 1e-10). The baseline
that benchmarks/seeds.py compares a whole `skipbench run` against; it prints its wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

WIDTH, BATCH, DEPTHS, EPS = 64, 100, (5, 10, 20, 50, 100), 1e-10


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def normal(rng: np.random.Generator, std: float) -> np.ndarray:
    return rng.normal(0.0, std, (WIDTH, WIDTH))


def plain_profile(rng: np.random.Generator, depth: int, x: np.ndarray, t: np.ndarray) -> list[float]:
    """Per-layer weight-gradient norms of the plain network, input side first."""
    layers = [(normal(rng, math.sqrt(2 / WIDTH)), np.zeros(WIDTH)) for _ in range(depth)]
    hs, zs, h = [x], [], x
    for i, (w, b) in enumerate(layers):
        z = h @ w.T + b
        zs.append(z)
        h = z if i == depth - 1 else relu(z)
        hs.append(h)
    dz, norms = (h - t) / BATCH, []
    for i in reversed(range(depth)):
        norms.append(float(np.linalg.norm(dz.T @ hs[i])))
        if i:
            dz = (dz @ layers[i][0]) * (zs[i - 1] > 0)
    return norms[::-1]


def residual_profile(rng: np.random.Generator, depth: int, x: np.ndarray, t: np.ndarray) -> list[float]:
    """Per-block ||dW1|| + ||dW2|| of the post-activation residual network, input side first."""
    he, zero = math.sqrt(2 / WIDTH), np.zeros(WIDTH)
    stem = normal(rng, he)
    blocks = [(normal(rng, he), normal(rng, he)) for _ in range(depth // 2)]
    head = normal(rng, math.sqrt(1 / WIDTH))
    h = relu(x @ stem.T + zero)
    ins, mids, sums = [], [], []
    for w1, w2 in blocks:
        a = relu(h @ w1.T + zero)
        s = h + a @ w2.T + zero
        ins.append(h), mids.append(a), sums.append(s)
        h = relu(s)
    y = h @ head.T + zero
    dh, norms = ((y - t) / BATCH) @ head, []
    for k in reversed(range(len(blocks))):
        w1, w2 = blocks[k]
        ds = dh * (sums[k] > 0)
        da = (ds @ w2) * (mids[k] > 0)
        norms.append(float(np.linalg.norm(ds.T @ mids[k]) + np.linalg.norm(da.T @ ins[k])))
        dh = ds + da @ w1
    return norms[::-1]


def run(seeds: int) -> dict:
    """{"plain D": [ratio per seed], "residual D": [...]} for every depth."""
    out = {}
    for depth in DEPTHS:
        for kind, profile in (("plain", plain_profile), ("residual", residual_profile)):
            ratios = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                x, t = rng.standard_normal((BATCH, WIDTH)), rng.standard_normal((BATCH, WIDTH))
                norms = profile(rng, depth, x, t)
                ratios.append(norms[0] / (norms[-1] + EPS))
            out[f"{kind} {depth}"] = ratios
    return out


def main() -> None:
    """Run experiment 1 over --seeds seeds; print the medians and the wall time."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=256)
    parser.add_argument("--out", help="write the per-seed ratios here (JSON)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ratios = run(args.seeds)
    elapsed = time.perf_counter() - t0
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(ratios, fh)
    for cell, values in ratios.items():
        print(f"{cell:>13}: median grad_ratio {float(np.exp(np.median(np.log(values)))):.3g}")
    print(f"numpy, {args.seeds} seeds: {elapsed:.2f} s")


if __name__ == "__main__":
    main()
