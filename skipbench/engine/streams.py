"""Independent random streams: one generator key per (seed, stream), disjoint by construction.

Every seed draws its weights, its data, its training batches, its evaluation batch and the
random numbers its blocks draw in their forward pass (dropout, stochastic depth) from streams of
its own. torch's CPU generator (a Mersenne Twister) is seeded from the low 32 bits of
its seed only (``manual_seed(1)`` and ``manual_seed(1 + 2**32)`` give the same numbers), so a
64-bit key would not make streams distinct: keys are chosen to be distinct modulo 2**32.

- weights: the seed itself, as ``torch.manual_seed(seed)`` before building (so a seed's weights
  are what they have always been); keys in [0, 2**31);
- every other stream: ``2**31 + mix(seed * 4 + stream - 1)``, where ``mix`` is a bijection of
  [0, 2**31) that scatters neighbouring integers (multiplications by odd constants and xor-shifts,
  both invertible modulo 2**31); keys in [2**31, 2**32).

So no two (seed, stream) pairs of any run share a key while seeds stay below MAX_SEED, which the
grid enforces. (Before, data used ``seed * 16 + stream``: seed 0's data stream was seed 1's
weight stream, draw for draw.)
"""

from __future__ import annotations

import torch

WEIGHTS, DATA, TRAIN, EVAL, FORWARD = 0, 1, 2, 3, 4
STREAMS = {"weights": WEIGHTS, "data": DATA, "train": TRAIN, "eval": EVAL, "forward": FORWARD}
MAX_SEED = 2**31 // 4  # seeds are 0 <= seed < MAX_SEED: every key below is then distinct
_MASK = 2**31 - 1


def _mix(x: int) -> int:
    """A bijection of [0, 2**31) that scatters neighbouring inputs."""
    x = (x * 0x2545F491) & _MASK
    x ^= x >> 15
    x = (x * 0x6C8E9CF5) & _MASK
    x ^= x >> 13
    x = (x * 0x1B873593) & _MASK
    return x ^ (x >> 16)


def key(seed: int, stream: int) -> int:
    """The generator seed of `stream` of `seed` (see the module's docstring)."""
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed {seed} is outside [0, {MAX_SEED})")
    if stream == WEIGHTS:
        return seed
    if stream not in (DATA, TRAIN, EVAL, FORWARD):
        raise ValueError(f"unknown stream {stream}")
    return 2**31 + _mix(seed * 4 + stream - 1)


def generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator at the start of `stream` of `seed`."""
    return torch.Generator().manual_seed(key(seed, stream))


def seed_weights(seed: int) -> None:
    """Seed torch's global generator for building `seed`'s network, as torch.manual_seed does,
    without its cost where CUDA is not yet initialized (there it records a traceback per call,
    to seed CUDA lazily): networks are built on the CPU, so a build draws from the CPU generator
    only."""
    k = key(seed, WEIGHTS)
    if torch.cuda.is_initialized():
        torch.manual_seed(k)
    else:
        torch.default_generator.manual_seed(k)
