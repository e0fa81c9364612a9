"""Tests for utils/evolution/training_objective.py: how a worker prepares its data before any child."""

from __future__ import annotations

import pytest

from utils import cli
from utils.data.image_cache import CacheDoesNotFit
from utils.errors import UserError
from utils.evolution.training_objective import evolve_training


class Stop(Exception):
    """Raised where the test has seen enough (the first check after the data is prepared)."""


class Preparation:
    """A stand-in for prepare_data: records the cache of each call; the first raises ``first_error``."""

    def __init__(self) -> None:
        self.caches: list[str | None] = []
        self.first_error: Exception | None = None

    def __call__(self, data, img_size, cache, single_cls=False) -> object:
        self.caches.append(cache)
        if len(self.caches) == 1 and self.first_error is not None:
            raise self.first_error
        return object()


@pytest.fixture
def calls(monkeypatch) -> Preparation:
    import utils.data.prepared
    import utils.training.trainer

    def check_run(*args, **kwargs):
        raise Stop

    preparation = Preparation()
    monkeypatch.setattr(utils.data.prepared, "prepare_data", preparation)
    monkeypatch.setattr(utils.training.trainer, "check_run", check_run)
    return preparation


def start(tmp_path, *flags: str) -> None:
    args = cli.parse_train_args(["--evolve", "2", "--device", "cpu", "--project", str(tmp_path), *flags])
    evolve_training(cli.build_evolve_options(args), cli.build_training_job(args))


def test_a_cache_that_does_not_fit_in_memory_falls_back_to_reading_from_disk(tmp_path, calls):
    calls.first_error = CacheDoesNotFit("--cache ram needs 9 GB but only 1 GB of memory is free")
    with pytest.raises(Stop):
        start(tmp_path)
    assert calls.caches == ["ram", None]


def test_another_error_that_mentions_memory_is_not_taken_for_a_full_cache(tmp_path, calls):
    calls.first_error = UserError("data.yaml: key 'train' points to /memory/images, which does not exist")
    with pytest.raises(UserError, match="/memory/images"):
        start(tmp_path)
    assert calls.caches == ["ram"]


def test_a_cache_the_user_asked_for_is_never_dropped(tmp_path, calls):
    calls.first_error = CacheDoesNotFit("--cache ram needs 9 GB but only 1 GB of memory is free")
    with pytest.raises(CacheDoesNotFit):
        start(tmp_path, "--cache", "ram")
    assert calls.caches == ["ram"]
