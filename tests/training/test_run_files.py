"""Hand-edited metrics, unwritable or full file systems: one line each, nothing half-written."""

import errno
import os

import pytest

from vaejax import train as train_module
from vaejax.checkpoints import Checkpointer
from vaejax.cli import main

QUICK = ["--epochs", "3", "--checkpoint-every", "1", "--hidden", "32", "--latent-dim", "3",
         "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--workdir", str(workdir), *QUICK]) == 0
    return workdir


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of a finished 3-epoch run (a checkpoint every epoch)."""
    import shutil
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def _resume(run, capsys, epochs=4):
    capsys.readouterr()
    rc = main(["train", "--workdir", str(run), "--resume", "--epochs", str(epochs), "--no-progress"])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("bad_line", ['{"epoch": 2, "mod', '{"model": 0}', '[1, 2]',
                                      '{"epoch": "2", "model": 0}'])
def test_a_damaged_middle_line_names_the_file_line_and_repair(run, capsys, bad_line):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = bad_line
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = (run / "metrics.jsonl").read_bytes()
    rc, err = _resume(run, capsys)
    assert rc == 2 and len(err) == 1
    assert "metrics.jsonl line 2 is not a metrics record" in err[0] and "delete the line" in err[0]
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("keep,missing", [(lambda lines: lines[1:], "lacks 1 of the 3 epochs "
                                           "trained (epochs 1)"),
                                          (lambda lines: [], "lacks 3 of the 3 epochs trained")])
def test_an_incomplete_epoch_history_is_reported(run, capsys, keep, missing):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in keep(lines)))
    rc, err = _resume(run, capsys)
    assert rc == 0 and any(missing in line for line in err), err


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys, where):
    (tmp_path / "f").write_text("x")
    workdir = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    assert main(["train", "--workdir", str(workdir), *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vaejax train: error: cannot make the run folder {workdir}: {tmp_path / 'f'} "
                   "is a file"]


def test_unwritable_full_and_non_utf8_workdirs_are_refused_before_loading(tmp_path, capsys,
                                                                          monkeypatch):
    def no_data(*args):
        raise AssertionError("the data were loaded")

    monkeypatch.setattr(train_module, "prepare_data", no_data)
    assert main(["train", "--workdir", str(tmp_path / "run\udcff"), *QUICK]) == 2
    assert "is not valid UTF-8" in capsys.readouterr().err

    def read_only(**kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as patch:
        patch.setattr(train_module.tempfile, "TemporaryFile", read_only)
        assert main(["train", "--workdir", str(tmp_path / "run"), *QUICK]) == 2
    assert f"cannot write to {tmp_path}: Read-only file system" in capsys.readouterr().err

    usage = train_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=3 << 20))
    assert main(["train", "--workdir", str(tmp_path / "run"), *QUICK]) == 2
    assert "only 3.0 MiB are free on the file system of" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_full_disk_mid_run_names_the_cause_and_resume_finishes(tmp_path, capsys, monkeypatch):
    save = Checkpointer.save

    def full_after_two(self, epoch, state):
        if epoch > 2:  # tensorstore reports ENOSPC inside its own error kind
            raise ValueError(f"Error writing {tmp_path}/ocdbt.process_0/d/1234: "
                             f"{os.strerror(errno.ENOSPC)} [OS error 28]")
        save(self, epoch, state)

    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "save", full_after_two)
        assert main(["train", "--workdir", str(workdir), *QUICK]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vaejax train: No space left on device: a file of {workdir} could not be "
                   "written; the checkpoint of epoch 2 is kept. Free some space and continue "
                   "with --resume"]
    leftover = workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1733"  # what a cut save leaves
    leftover.mkdir()
    rc, err = _resume(workdir, capsys, epochs=3)
    assert rc == 0 and not any("lacks" in line for line in err)
    assert not leftover.exists()
