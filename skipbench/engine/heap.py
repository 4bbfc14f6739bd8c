"""A local worker process's heap: keep freed memory for the next chunk instead of returning it.

glibc's malloc gives an allocation of more than its mmap threshold (at most 32 MiB, adjusted as
the process runs) pages of its own, and hands them back to the kernel when the tensor is freed;
it also trims free memory at the top of the heap past twice that threshold. A measurement
allocates the same large tensors again and again (every evaluation of a chunk: the dense block's
feature buffer of 64 seeds x 500 rows x 352 features is 45 MB), so each one costs a page fault
per 4 KiB page touched: an evaluation of identity's dense network at depth 20 (64 seeds) faulted
11,000 pages in and took 127-134 ms; with a fixed threshold of 64 MiB and trimming only past
512 MiB, 1,000 pages and 109-113 ms. A worker's freed tensors stay in its heap and the next ones
reuse those pages. A worker's peak memory is what its chunks keep alive
(engine/stack.CHUNK_BYTES), which this does not change; it only stops giving memory back
between chunks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

MMAP_THRESHOLD = 64 * 2**20
TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Set this process's glibc malloc to keep freed memory (see the module's docstring);
    False where the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def set_up_worker() -> None:
    """A local worker process, after its imports: its heap keeps freed memory (see the module's
    docstring), and every object alive now (the imports: torch, the plugins) is frozen out of
    the garbage collector's reach, so that its full collections during the tasks traverse only
    what the tasks make, not the hundreds of thousands of objects imported before them (about
    0.1 s each)."""
    keep_freed_memory()
    gc.freeze()
