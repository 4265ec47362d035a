"""Fixtures of the state tests: where a test's journal lives, and a small tree copied into
Azurite (the azurite and container fixtures are tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from verify_helpers import container_client, copy_tree, make_tree


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A journal path under a directory that does not exist yet (Journal.open creates it)."""
    return tmp_path / "state" / "jobs.sqlite"


@pytest.fixture
def copied(tmp_path: Path, azurite, container: str):
    """(job id, journal path, {rel_path: bytes}, a ContainerClient, the source root) of a plain
    copy of make_tree into the container."""
    src = tmp_path / "src"
    files = make_tree(src)
    journal = tmp_path / "jobs.sqlite"
    job_id = copy_tree(src, container, journal, azurite.connection_string)
    with container_client(azurite, container) as client:
        yield job_id, journal, files, client, src
