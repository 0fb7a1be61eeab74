"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic driving-scene data set in both native layouts, generated once per session:
    {"cityscapes": root, "bdd100k": root}, each with 16 train and 8 val images of 64x128
    (splits "train" and "val")."""
    from distillery.data.synthetic import generate_synthetic

    base = tmp_path_factory.mktemp("synthetic")
    roots = {}
    for fmt in ("cityscapes", "bdd100k"):
        roots[fmt] = base / fmt
        generate_synthetic(roots[fmt], fmt, num_train=16, num_val=8, image_size=(64, 128), seed=0)
    return roots


@pytest.fixture
def sessions(tmp_path: Path):
    """A session factory on a fresh, migrated SQLite database (`distillery run`'s kind)."""
    from distillery.db import make_engine, make_session_factory, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()
