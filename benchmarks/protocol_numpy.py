"""The study's experiment 1 the study's way: NumPy, one seed at a time.

    python benchmarks/protocol_numpy.py --seeds 256

Per PROTOCOLS.md: 100 samples, inputs and targets N(0, 1), width 64; plain networks (D layers,
He-normal, zero bias, ReLU after all but the last) and residual networks (He-normal projection
and ReLU, D // 2 post-activation blocks, Xavier-normal (seed) output projection) at depths 5,
10, 20, 50, 100; loss 0.5 * sum of squares / 100; per-layer (per-block: ||dW1|| + ||dW2||)
weight-gradient norms by a hand-written backward pass, and first / (last + 1e-10). The baseline
that benchmarks/seeds.py compares a whole `skipbench run` against; it prints its wall time.
It is also the oracle of tests/test_seed_protocol.py, which checks that on shared weights it
computes skipbench's numbers, so that the benchmark compares the same protocol.
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


def he(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    """He-normal: N(0, 2 / fan_in)."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_out, fan_in))


def xavier_seed(rng: np.random.Generator, fan_out: int, fan_in: int) -> np.ndarray:
    """The study's Xavier-normal: N(0, 1 / fan_in)."""
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), (fan_out, fan_in))


def plain_net(rng: np.random.Generator, depth: int, width: int) -> dict:
    """D Linear layers width -> width, He-normal, zero bias."""
    return {"layers": [(he(rng, width, width), np.zeros(width)) for _ in range(depth)]}


def residual_net(rng: np.random.Generator, depth: int, width: int) -> dict:
    """He-normal input projection, D // 2 blocks (W1, b1, W2, b2) He-normal, Xavier-normal (seed)
    output projection; all biases zero."""
    stem = (he(rng, width, width), np.zeros(width))
    blocks = [(he(rng, width, width), np.zeros(width), he(rng, width, width), np.zeros(width))
              for _ in range(depth // 2)]
    head = (xavier_seed(rng, width, width), np.zeros(width))
    return {"stem": stem, "blocks": blocks, "head": head}


def gradient_profile(kind: str, net: dict, x: np.ndarray, t: np.ndarray) -> list[float]:
    """Hand-written backward pass of loss = 0.5 * sum((y - t)^2) / batch; the profile is the
    Frobenius norm of each layer's weight gradient (plain) or ||dW1|| + ||dW2|| per block
    (residual), input side first."""
    batch = x.shape[0]
    if kind == "plain":
        hs, zs, h = [x], [], x
        layers = net["layers"]
        for i, (w, b) in enumerate(layers):
            z = h @ w.T + b
            zs.append(z)
            h = z if i == len(layers) - 1 else relu(z)  # ReLU after every layer but the last
            hs.append(h)
        dz = (h - t) / batch  # output gradient (output - target) / batch
        norms = []
        for i in reversed(range(len(layers))):
            norms.append(float(np.linalg.norm(dz.T @ hs[i])))  # dL/dW_i = dz_i^T h_{i-1}
            if i:
                dz = (dz @ layers[i][0]) * (zs[i - 1] > 0)
        return norms[::-1]
    w0, b0 = net["stem"]
    h = relu(x @ w0.T + b0)
    cache = []
    for w1, b1, w2, b2 in net["blocks"]:
        u = h @ w1.T + b1
        a = relu(u)
        s = h + a @ w2.T + b2
        cache.append((h, u, a, s))
        h = relu(s)  # post-activation: ReLU after the addition
    wq, bq = net["head"]
    y = h @ wq.T + bq  # no activation
    dh = ((y - t) / batch) @ wq
    norms = []
    for (h_in, u, a, s), (w1, b1, w2, b2) in zip(reversed(cache), reversed(net["blocks"])):
        ds = dh * (s > 0)
        dw2 = ds.T @ a
        du = (ds @ w2) * (u > 0)
        dw1 = du.T @ h_in
        norms.append(float(np.linalg.norm(dw1) + np.linalg.norm(dw2)))
        dh = ds + du @ w1
    return norms[::-1]


def run(seeds: int) -> dict:
    """{"plain D": [ratio per seed], "residual D": [...]} for every depth."""
    out = {}
    for depth in DEPTHS:
        for kind, make in (("plain", plain_net), ("residual", residual_net)):
            ratios = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                x, t = rng.standard_normal((BATCH, WIDTH)), rng.standard_normal((BATCH, WIDTH))
                norms = gradient_profile(kind, make(rng, depth, WIDTH), x, t)
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
