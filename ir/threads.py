"""One BLAS thread for erasec's float64 work, so a patch's bytes do not depend on the thread count
(issue 16 item 9).

OpenBLAS splits some reductions by thread: a Cholesky solve of a 768 × 768 system with 200 right-hand
sides gave 131,630 of 153,600 entries different in the last bits at 2 threads than at 1, and
``build-many -j 2`` (one thread per worker) then wrote other bytes than ``build`` (two). The float64
work of a build is small beside its text encoding (docs/performance.md, "Determinism and its cost"),
so it runs on one thread. ``threadpoolctl`` limits only the BLAS libraries already loaded, so
scipy's (numpy's is loaded with numpy) is loaded first.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_blas_thread():
    """Inside, numpy's and scipy's BLAS use one thread; usable as a decorator (``@one_blas_thread()``)."""
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, so that it is limited too)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
