"""Keep scikit-learn's thread pools from fighting PyTorch's on a small machine.

scikit-learn's t-SNE / MDS (OpenMP, BLAS) and PyTorch each bring a thread pool; on a busy
2-core machine their threads spin against each other (t-SNE of 150 samples: 25 s instead of
1 s). Limiting the BLAS/OpenMP pools to one thread for these calls gives the same results.

Examples
--------
>>> import numpy as np
>>> with single_threaded_blas():
...     float(np.ones((3, 3)).sum())
9.0
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_threaded_blas():
    """Limit the BLAS and OpenMP pools of this process to one thread inside the block."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield
