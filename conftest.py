"""Settings shared by every test run: the tests, the notebooks and the docstring examples."""

import os
from pathlib import Path

# Every test run trains into (and reads from) its own cache, never the user's.
os.environ.setdefault("WORKBENCH_CACHE",
                      str(Path(__file__).resolve().parent / ".pytest_cache" / "workbench-cache"))
