"""The failure database keeps failing seeds across runs and never breaks a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import moonpool
from moonpool.sim import _database
from moonpool.sim._database import (
    DEFAULT_DIRECTORY,
    FailureDatabase,
    MoonpoolDatabaseWarning,
    SavedSeed,
)

# Every database warning a test does not expect with pytest.warns fails it.
pytestmark = pytest.mark.filterwarnings("error::moonpool.sim._database.MoonpoolDatabaseWarning")

KEY = "tests/sim/test_bank.py::test_transfers"


def _files(directory: Path) -> list[str]:
    """Every file under ``directory``, relative, sorted (temporary files included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _write_raw(db: FailureDatabase, key: str, data: bytes) -> Path:
    path = db.path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- saving, counting, dropping ---------------------------------------------------


def test_seeds_come_back_in_the_order_first_saved(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    assert db.seeds(KEY) == []
    for seed in (42, 7, 1000, 7, 42):
        db.record(KEY, seed, failed=True)
    assert db.seeds(KEY) == [42, 7, 1000]


def test_a_seed_is_dropped_exactly_at_drop_after_passes(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=3)
    db.record(KEY, 5, failed=True)
    db.record(KEY, 6, failed=True)
    db.record(KEY, 5, failed=False)
    db.record(KEY, 5, failed=False)
    assert db.entries(KEY) == [SavedSeed(5, 2, ""), SavedSeed(6, 0, "")]
    db.record(KEY, 5, failed=False)
    assert db.seeds(KEY) == [6]


def test_a_failure_in_between_resets_the_pass_count(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=2)
    db.record(KEY, 5, failed=True)
    db.record(KEY, 5, failed=False)
    db.record(KEY, 5, failed=True)
    assert db.entries(KEY) == [SavedSeed(5, 0, "")]
    db.record(KEY, 5, failed=False)
    assert db.seeds(KEY) == [5]  # one pass since the last failure, not two
    db.record(KEY, 5, failed=False)
    assert db.seeds(KEY) == []


def test_drop_after_one_drops_on_the_first_pass(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=1)
    db.record(KEY, 5, failed=True)
    db.record(KEY, 5, failed=False)
    assert db.seeds(KEY) == []


def test_dropping_the_last_seed_removes_the_file(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=1)
    db.record(KEY, 5, failed=True)
    assert db.path_for(KEY).exists()
    db.record(KEY, 5, failed=False)
    assert not db.path_for(KEY).exists()


def test_a_passing_unknown_seed_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    db = FailureDatabase(directory)
    db.record(KEY, 5, failed=False)
    assert db.seeds(KEY) == []
    assert db.entries(KEY) == []
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_passing_unknown_seed_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 5, failed=True)
    before = db.path_for(KEY).stat().st_mtime_ns, db.path_for(KEY).read_bytes()
    db.record(KEY, 6, failed=False)
    assert (db.path_for(KEY).stat().st_mtime_ns, db.path_for(KEY).read_bytes()) == before


def test_errors_are_remembered_on_one_short_line(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 1, failed=True, error="AssertionViolation: balance\n  went   negative")
    db.record_failure(KEY, 2, "x" * 1000)
    db.record_failure(KEY, 3, "")
    first, second, third = db.entries(KEY)
    assert first == SavedSeed(1, 0, "AssertionViolation: balance went negative")
    assert len(second.error) == 200
    assert second.error.startswith("xxx")
    assert second.error.endswith("…")
    assert third.error == ""


def test_failing_again_keeps_the_place_and_updates_the_error(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record_failure(KEY, 1, "old error")
    db.record_failure(KEY, 2, "other")
    db.record(KEY, 1, failed=False)
    db.record_failure(KEY, 1, "new error")
    assert db.entries(KEY)[0] == SavedSeed(1, 0, "new error")
    db.record(KEY, 1, failed=False)
    db.record(KEY, 1, failed=True)  # no error given: the old one stays
    assert db.entries(KEY) == [SavedSeed(1, 0, "new error"), SavedSeed(2, 0, "other")]


def test_an_error_is_ignored_for_a_pass(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record_failure(KEY, 1, "the bug")
    db.record(KEY, 1, failed=False, error="ignored")
    assert db.entries(KEY) == [SavedSeed(1, 1, "the bug")]


def test_big_seeds_round_trip(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 0, failed=True)
    db.record(KEY, 2**100, failed=True)
    assert FailureDatabase(tmp_path / "db").seeds(KEY) == [0, 2**100]


def test_clear_forgets_a_key(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.clear(KEY)  # nothing saved: nothing happens
    assert not (tmp_path / "db").exists()
    db.record(KEY, 1, failed=True)
    db.record("other", 2, failed=True)
    db.clear(KEY)
    assert db.seeds(KEY) == []
    assert not db.path_for(KEY).exists()
    assert db.seeds("other") == [2]


# -- keys and files -------------------------------------------------------------


def test_two_keys_are_independent(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=1)
    db.record("a", 1, failed=True)
    db.record("b", 2, failed=True)
    db.record("b", 1, failed=False)  # seed 1 of "b" is not saved: "a"'s seed 1 stays
    assert db.seeds("a") == [1]
    assert db.seeds("b") == [2]
    db.record("a", 1, failed=False)
    assert db.seeds("a") == []
    assert db.seeds("b") == [2]


def test_keys_with_the_same_sanitised_prefix_get_different_files(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    long_prefix = "x" * 80
    pairs = [("a/b", "a:b"), ("a b", "a_b"), (long_prefix + "1", long_prefix + "2"), ("é", "è")]
    for first, second in pairs:
        assert db.path_for(first) != db.path_for(second)
        assert db.path_for(first).name[:-22] == db.path_for(second).name[:-22]  # same prefix
        db.record(first, 1, failed=True)
        db.record(second, 2, failed=True)
        assert db.seeds(first) == [1]
        assert db.seeds(second) == [2]


def test_file_names_are_readable_safe_and_stable(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    path = db.path_for(KEY)
    assert path.parent == tmp_path / "db" / "failing-seeds"
    # sha256("tests/sim/test_bank.py::test_transfers")[:16], fixed forever.
    assert path.name == "tests_sim_test_bank.py_test_transfers-ceb84405e0ca966a.json"
    long = db.path_for("k" * 500)
    assert long.name == "k" * 60 + "-" + long.name[61:77] + ".json"
    assert db.path_for("../../etc/passwd").parent == path.parent
    assert not db.path_for("..").name.startswith(".")
    assert db.path_for("::").name.endswith(".json")
    for name in (db.path_for(k).name for k in ("..", "::", "a\0b", "\n", "ключ")):
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in name), name


def test_the_file_format(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record_failure(KEY, 9, "boom")
    db.record(KEY, 9, failed=False)
    db.record(KEY, 3, failed=True)
    document = json.loads(db.path_for(KEY).read_text())
    assert document == {
        "version": 1,
        "key": KEY,
        "seeds": [{"seed": 9, "passes": 1, "error": "boom"}, {"seed": 3, "passes": 0, "error": ""}],
    }


def test_a_new_instance_sees_the_data(tmp_path: Path) -> None:
    FailureDatabase(tmp_path / "db").record_failure(KEY, 11, "boom")
    FailureDatabase(tmp_path / "db").record(KEY, 11, failed=False)
    assert FailureDatabase(tmp_path / "db").entries(KEY) == [SavedSeed(11, 1, "boom")]


def test_another_process_with_another_hash_seed_sees_the_data(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 3, failed=True)
    db.record(KEY, 1, failed=True)
    script = (
        "import json, sys\n"
        "from moonpool.sim._database import FailureDatabase\n"
        "db = FailureDatabase(sys.argv[1])\n"
        "seeds = db.seeds(sys.argv[2])\n"
        "db.record_failure(sys.argv[2], 2, 'from the child')\n"
        "print(json.dumps({'seeds': seeds, 'path': str(db.path_for(sys.argv[2]))}))\n"
    )
    root = str(Path(moonpool.__file__).resolve().parent.parent)
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "db"), KEY],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        child = json.loads(out.stdout)
        assert child["path"] == str(db.path_for(KEY))
        assert child["seeds"][:2] == [3, 1]
    assert db.seeds(KEY) == [3, 1, 2]


def test_a_relative_directory_is_resolved_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DEFAULT_DIRECTORY == ".moonpool"
    db = FailureDatabase(DEFAULT_DIRECTORY)
    assert db.directory == Path(".moonpool")
    monkeypatch.chdir(tmp_path)
    db.record(KEY, 1, failed=True)
    assert (tmp_path / ".moonpool" / "failing-seeds" / db.path_for(KEY).name).exists()


def test_repr_and_settings(tmp_path: Path) -> None:
    db = FailureDatabase(str(tmp_path), drop_after=5, max_seeds=7)
    assert (db.directory, db.drop_after, db.max_seeds) == (tmp_path, 5, 7)
    assert repr(db) == f"FailureDatabase({str(tmp_path)!r}, drop_after=5, max_seeds=7)"


# -- the directory ----------------------------------------------------------------


def test_reading_creates_nothing(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "a" / "b")
    assert db.seeds(KEY) == []
    assert db.entries(KEY) == []
    db.path_for(KEY)
    assert list(tmp_path.iterdir()) == []


def test_the_first_write_creates_the_directory_with_a_gitignore(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / ".moonpool"
    db = FailureDatabase(directory)
    db.record(KEY, 1, failed=True)
    gitignore = (directory / ".gitignore").read_text()
    assert "*" in gitignore.splitlines()
    assert _files(directory) == [".gitignore", f"failing-seeds/{db.path_for(KEY).name}"]


def test_git_ignores_the_directory(tmp_path: Path) -> None:
    git = subprocess.run(["git", "--version"], capture_output=True, check=False)
    if git.returncode != 0:
        pytest.skip("git is not available")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    FailureDatabase(tmp_path / ".moonpool").record(KEY, 1, failed=True)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""


def test_a_directory_the_user_made_gets_no_gitignore(tmp_path: Path) -> None:
    (tmp_path / "regressions").mkdir()
    FailureDatabase(tmp_path / "regressions").record(KEY, 1, failed=True)
    assert not (tmp_path / "regressions" / ".gitignore").exists()


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", drop_after=2)
    for seed in range(20):
        db.record(KEY, seed, failed=True)
        db.record(KEY, seed // 2, failed=False)
    assert _files(tmp_path / "db" / "failing-seeds") == [db.path_for(KEY).name]


# -- atomic writes ------------------------------------------------------------------


def test_ctrl_c_during_a_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 1, failed=True)
    before = db.path_for(KEY).read_bytes()

    def interrupted(src: object, dst: object) -> None:
        assert Path(str(src)).read_bytes() != before  # the new content was written...
        raise KeyboardInterrupt  # ...but Ctrl-C came before the rename

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        db.record(KEY, 2, failed=True)
    monkeypatch.undo()
    assert db.path_for(KEY).read_bytes() == before
    assert _files(tmp_path / "db" / "failing-seeds") == [db.path_for(KEY).name]
    assert db.seeds(KEY) == [1]


def test_a_failed_rename_warns_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 1, failed=True)

    def fails(src: object, dst: object) -> None:
        raise PermissionError(13, "file in use")

    monkeypatch.setattr(os, "replace", fails)
    with pytest.warns(MoonpoolDatabaseWarning, match="could not write"):
        db.record(KEY, 2, failed=True)
    monkeypatch.undo()
    assert db.seeds(KEY) == [1]
    assert _files(tmp_path / "db" / "failing-seeds") == [db.path_for(KEY).name]


# -- bad files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not a moonpool database file"),
        (b"", "not a moonpool database file"),
        (b"\xff\xfe garbage", "not a moonpool database file"),
        (b"[1, 2, 3]", "not a moonpool database file"),
        (b'{"version": 2, "key": "k", "seeds": []}', "unsupported version 2"),
        (b'{"version": "1", "key": "k", "seeds": []}', "not a moonpool database file"),
        (b'{"version": 1, "key": "k", "seeds": {"seed": 1}}', "wrongly shaped"),
        (b'{"version": 1, "key": "k", "seeds": [{"seed": -1}]}', "wrongly shaped"),
        (b'{"version": 1, "key": "k", "seeds": [{"seed": 1.5}]}', "wrongly shaped"),
        (b'{"version": 1, "key": "k", "seeds": [{"passes": 1}]}', "wrongly shaped"),
        (b'{"version": 1, "seeds": []}', "wrongly shaped"),
        (b'{"version": 1, "key": "other", "seeds": [{"seed": 1}]}', "'other', not of 'k'"),
    ],
)
def test_a_bad_file_warns_once_reads_empty_and_is_replaced(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    db = FailureDatabase(tmp_path / "db")
    path = _write_raw(db, "k", content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert db.seeds("k") == []
        assert db.entries("k") == []
        db.record("k", 1, failed=False)  # unknown (unreadable) seed passing: no write
    assert [w.category for w in caught] == [MoonpoolDatabaseWarning]
    message = str(caught[0].message)
    assert str(path) in message
    assert reason in message
    assert "replaced on the next failure" in message
    assert caught[0].filename == __file__  # points at the caller, not the database
    assert path.read_bytes() == content
    db.record("k", 7, failed=True)
    assert db.seeds("k") == [7]
    assert FailureDatabase(tmp_path / "db").seeds("k") == [7]  # a clean file, no warning


def test_a_file_that_goes_bad_again_warns_again(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    path = _write_raw(db, "k", b"junk")
    with pytest.warns(MoonpoolDatabaseWarning):
        db.seeds("k")
    db.record("k", 1, failed=True)
    path.write_bytes(b"junk again")
    with pytest.warns(MoonpoolDatabaseWarning):
        assert db.seeds("k") == []


def test_an_unreadable_path_warns(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.path_for("k").mkdir(parents=True)  # a directory where the file should be
    with pytest.warns(MoonpoolDatabaseWarning, match="ignored the failure database file"):
        assert db.seeds("k") == []


def test_a_hand_edited_file_with_repeats_and_extra_fields_is_read(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    document = {
        "version": 1,
        "key": "k",
        "comment": "edited by hand",
        "seeds": [{"seed": 4, "note": "x"}, {"seed": 2, "passes": 1}, {"seed": 4}],
    }
    _write_raw(db, "k", msgspec.json.encode(document))
    assert db.entries("k") == [SavedSeed(4, 0, ""), SavedSeed(2, 1, "")]


# -- bounds -------------------------------------------------------------------------


def test_the_oldest_seed_makes_room_when_full(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db", max_seeds=3)
    for seed in (1, 2, 3):
        db.record(KEY, seed, failed=True)
    db.record(KEY, 2, failed=True)  # already saved: nothing is evicted
    assert db.seeds(KEY) == [1, 2, 3]
    db.record(KEY, 4, failed=True)
    assert db.seeds(KEY) == [2, 3, 4]
    db.record(KEY, 5, failed=True)
    assert db.seeds(KEY) == [3, 4, 5]


def test_the_default_bound_is_100(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    for seed in range(150):
        db.record(KEY, seed, failed=True)
    assert db.seeds(KEY) == list(range(50, 150))


def test_a_file_from_a_larger_bound_reads_as_its_newest_seeds(tmp_path: Path) -> None:
    big = FailureDatabase(tmp_path / "db", max_seeds=10)
    for seed in range(10):
        big.record(KEY, seed, failed=True)
    small = FailureDatabase(tmp_path / "db", max_seeds=4)
    assert small.seeds(KEY) == [6, 7, 8, 9]
    small.record(KEY, 10, failed=True)
    assert big.seeds(KEY) == [7, 8, 9, 10]


# -- an unwritable directory ------------------------------------------------------


def test_a_directory_that_is_a_file_warns_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("not a directory")
    db = FailureDatabase(tmp_path / "db")
    with pytest.warns(MoonpoolDatabaseWarning, match="could not write") as caught:
        db.record(KEY, 1, failed=True)
    assert str(db.path_for(KEY)) in str(caught[0].message)
    assert caught[0].filename == __file__
    assert (tmp_path / "db").read_text() == "not a directory"
    assert db.seeds(KEY) == []  # nothing saved there: reading is quiet


def test_a_file_that_cannot_be_created_warns_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a read-only directory does, also when the tests run as root.
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 1, failed=True)

    def denied(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)
    with pytest.warns(MoonpoolDatabaseWarning, match="could not write.*Permission denied"):
        db.record(KEY, 2, failed=True)
    with pytest.warns(MoonpoolDatabaseWarning, match="could not write"):
        db.record(KEY, 1, failed=False)
    monkeypatch.undo()
    assert db.entries(KEY) == [SavedSeed(1, 0, "")]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="needs POSIX permissions, which root ignores",
)
def test_a_read_only_directory_warns_and_the_run_goes_on(tmp_path: Path) -> None:
    db = FailureDatabase(tmp_path / "db")
    db.record(KEY, 1, failed=True)
    folder = db.path_for(KEY).parent
    fresh = FailureDatabase(tmp_path / "ro" / "db")
    (tmp_path / "ro").mkdir()
    folder.chmod(0o500)
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.warns(MoonpoolDatabaseWarning, match="could not write"):
            db.record(KEY, 2, failed=True)
        with pytest.warns(MoonpoolDatabaseWarning, match="could not write"):
            db.record(KEY, 1, failed=False)
        with pytest.warns(MoonpoolDatabaseWarning, match="could not write"):
            fresh.record(KEY, 1, failed=True)
        assert db.seeds(KEY) == [1]  # still readable
        assert fresh.seeds(KEY) == []
        assert _files(folder) == [db.path_for(KEY).name]
    finally:
        folder.chmod(0o700)
        (tmp_path / "ro").chmod(0o700)


# -- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3", None])
@pytest.mark.parametrize("name", ["drop_after", "max_seeds"])
def test_bad_counts_are_rejected(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        FailureDatabase(tmp_path, **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, True, False, 1.0, "3", None])
def test_bad_seeds_are_rejected(tmp_path: Path, seed: object) -> None:
    db = FailureDatabase(tmp_path / "db")
    with pytest.raises(ValueError, match="seeds are non-negative integers"):
        db.record(KEY, seed, failed=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds are non-negative integers"):
        db.record(KEY, seed, failed=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seeds are non-negative integers"):
        db.record_failure(KEY, seed, "x")  # type: ignore[arg-type]
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("key", ["", None, 1, b"key", ["k"]])
def test_bad_keys_are_rejected(tmp_path: Path, key: object) -> None:
    db = FailureDatabase(tmp_path / "db")
    bad: Any = key
    calls: list[Callable[[], object]] = [
        lambda: db.path_for(bad),
        lambda: db.seeds(bad),
        lambda: db.entries(bad),
        lambda: db.record(bad, 1, failed=True),
        lambda: db.record_failure(bad, 1, "x"),
        lambda: db.clear(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="key is a non-empty str"):
            call()
    assert not (tmp_path / "db").exists()


def test_a_key_that_is_not_utf8_text_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid UTF-8"):
        FailureDatabase(tmp_path).record("bad \udc80", 1, failed=True)


def test_an_error_must_be_text(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="error must be a str"):
        FailureDatabase(tmp_path).record(KEY, 1, failed=True, error=ValueError("x"))  # type: ignore[arg-type]


# -- the public surface -------------------------------------------------------------


def test_public_names() -> None:
    assert _database.__all__ == [
        "DEFAULT_DIRECTORY",
        "FailureDatabase",
        "MoonpoolDatabaseWarning",
        "SavedSeed",
    ]
    for cls in (FailureDatabase, MoonpoolDatabaseWarning, SavedSeed):
        assert cls.__module__ == "moonpool.sim"
    assert issubclass(MoonpoolDatabaseWarning, UserWarning)
    saved = SavedSeed(1, 2, "e")
    with pytest.raises(AttributeError):
        saved.seed = 3  # type: ignore[misc]
