import os

import pytest

os.environ.setdefault("LOCDISTILL_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated datasets go to one session-wide temp cache, never the user's home."""
    cache = tmp_path_factory.getbasetemp() / "locdistill_cache"
    monkeypatch.setenv("LOCDISTILL_CACHE", str(cache))
