from __future__ import annotations

from pathlib import Path

import pytest

from distillery.training import checkpoints as ckpt


def _save(root: Path, epoch: int, complete: bool = True) -> Path:
    d = ckpt.step_dir(root, epoch)
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x")
    if complete:
        ckpt.TrainerState(epoch=epoch, global_step=3 * epoch, history=[{"epoch": epoch}]).save(d)
    return d


def test_state_round_trips(tmp_path: Path) -> None:
    s = ckpt.TrainerState(epoch=2, global_step=6, history=[{"miou": 0.5}], teacher_metrics={"a": 1})
    s.save(tmp_path)
    assert ckpt.TrainerState.load(tmp_path) == s


def test_latest_skips_an_interrupted_save(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    _save(tmp_path, 10)  # numeric, not lexical order
    _save(tmp_path, 11, complete=False)
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.step_dir(tmp_path, 10)
    ckpt.remove_incomplete(tmp_path)
    assert not ckpt.step_dir(tmp_path, 11).exists()


def test_prune_keeps_the_newest_two(tmp_path: Path) -> None:
    for e in (1, 2, 3):
        _save(tmp_path, e)
    ckpt.prune(tmp_path)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step-2", "step-3"]


def test_no_checkpoint_folder(tmp_path: Path) -> None:
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_unreadable_state_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ckpt.STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json"):
        ckpt.TrainerState.load(tmp_path)


def test_stage_cancelled_names_what_was_kept_and_pickles(tmp_path: Path) -> None:
    import pickle

    from distillery.training import StageCancelled

    exc = StageCancelled("distill", 2, 1, tmp_path / "epoch-1")
    assert "epoch 2, step 1" in str(exc) and "epoch-1" in str(exc)
    back = pickle.loads(pickle.dumps(exc))
    assert (back.stage, back.epoch, back.step, back.checkpoint_dir) == (
        "distill", 2, 1, tmp_path / "epoch-1",
    )  # fmt: skip
    assert str(back) == str(exc)
