"""The machinery every measurement runs on: cells, random streams, seed stacks, chunks of seeds,
replayed builds, and the memory and roofline readings.

- cell.py: a Cell (variant, depth, width, batch, seeds, device, options) and its builds.
- streams.py: one generator key per (seed, stream), disjoint by construction.
- stack.py: the seeds of a chunk run as stacked arithmetic (stacked, vmap or loop path), and
  chunks sized in bytes.
- replay.py: one build recorded and replayed for the other seeds, where that is exact.
- memory.py, roofline.py: peak memory from the allocators; FLOPs and the matmul rate.
- heap.py: a worker's malloc keeps freed memory between chunks (no page faults for reused
  tensors), and its imports are frozen out of the garbage collector's way.
"""
