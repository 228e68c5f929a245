"""Another torch job on the same machine: a process multiplying matrices on all of torch's threads, as a second
training job or a data-loading process would, for the benchmark's "busy machine" cases."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator

_JOB = "import torch\na = torch.randn(768, 768)\nwhile True:\n    a = torch.tanh(a @ a)\n"


@contextlib.contextmanager
def busy_machine() -> Iterator[None]:
    """Run the other job for the duration of the block."""
    job = subprocess.Popen([sys.executable, "-c", _JOB], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # importing torch: let the job reach its loop first
    try:
        yield
    finally:
        job.kill()
        job.wait()
