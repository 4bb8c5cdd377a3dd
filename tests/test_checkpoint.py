"""Atomic JSON records and the record of a run that a NaN/inf loss stopped."""

from __future__ import annotations

import json

import pytest

from flowpolicy.checkpoint import read_stop, record_stop, refuse_resume_if_stopped, save_json
from flowpolicy.errors import UserError


def test_save_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "done.json"
    save_json(path, {"step": 1})
    save_json(path, {"step": 2})
    assert json.loads(path.read_text()) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["done.json"]


def test_a_stop_is_recorded_explained_and_refuses_a_resume(tmp_path):
    refuse_resume_if_stopped(tmp_path)  # no record: nothing to refuse
    assert read_stop(tmp_path) is None
    error = record_stop(tmp_path, 96, 64, "loss is nan", "Training")
    assert isinstance(error, UserError)
    assert str(error).startswith("Training stopped at step 96: loss is nan.")
    assert "checkpoint at step 64" in str(error) and "--max-grad-norm" in str(error)
    assert read_stop(tmp_path) == {"step": 96, "checkpoint_step": 64, "reason": "loss is nan"}
    with pytest.raises(UserError, match="stopped at step 96 .*delete .*stopped.json"):
        refuse_resume_if_stopped(tmp_path)


def test_a_stop_before_the_first_checkpoint_says_so(tmp_path):
    error = record_stop(tmp_path, 5, None, "the BC loss is inf", "Pretraining")
    assert "No checkpoint had been written" in str(error)


def test_a_damaged_stop_record_is_a_clear_error(tmp_path):
    (tmp_path / "stopped.json").write_text("{not json")
    with pytest.raises(UserError, match="Could not read .*stopped.json.*delete it"):
        read_stop(tmp_path)
