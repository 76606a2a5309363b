"""Output paths: one guard (`check_outputs`) and one atomic writer (`atomic_output`) for every file we write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffusers_videovae.paths import (
    OutputPathError,
    atomic_output,
    check_outputs,
    raise_on_sigterm,
    remove_stale_temporaries,
    same_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"the user's video")
    return path


def test_same_file_sees_hard_links_symlinks_and_not_yet_existing_paths(tmp_path, clip):
    os.link(clip, tmp_path / "hard.mp4")
    (tmp_path / "soft.mp4").symlink_to(clip)
    (tmp_path / "alias").symlink_to(tmp_path)
    assert same_file(tmp_path / "hard.mp4", clip)
    assert same_file(tmp_path / "soft.mp4", clip)
    assert same_file(tmp_path / "alias" / "new.mp4", tmp_path / "new.mp4")  # neither exists yet
    assert not same_file(tmp_path / "other.mp4", clip)


@pytest.mark.parametrize("link", ["same", "hard", "soft"])
def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, clip, link):
    output = {"same": clip, "hard": tmp_path / "hard.mp4", "soft": tmp_path / "soft.mp4"}[link]
    if link == "hard":
        os.link(clip, output)
    elif link == "soft":
        output.symlink_to(clip)
    with pytest.raises(OutputPathError) as error:
        check_outputs([(output, "-o")], [(clip, "INPUT")], overwrite=True)
    assert str(error.value) == (
        f"Refusing to write -o {output}: it is the same file as the input INPUT {clip}; choose another output name."
    )
    assert clip.read_bytes() == b"the user's video"


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    (tmp_path / "alias").symlink_to(tmp_path)
    with pytest.raises(OutputPathError, match=r"--side-by-side .*alias/r\.mp4: -o .*r\.mp4 names the same file"):
        check_outputs([(tmp_path / "r.mp4", "-o"), (tmp_path / "alias" / "r.mp4", "--side-by-side")])


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, clip):
    output = tmp_path / "old.mp4"
    output.write_bytes(b"old")
    with pytest.raises(OutputPathError, match=r"^-o .*old\.mp4 already exists; pass --overwrite to replace it\.$"):
        check_outputs([(output, "-o")], [(clip, "INPUT")])
    assert check_outputs([(output, "-o"), (None, "--csv")], [(clip, "INPUT")], overwrite=True) == [output]


def test_the_existing_checks_stay(tmp_path):
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_outputs([(tmp_path / "a-file" / "x.mp4", "-o")])
    with pytest.raises(OutputPathError, match="it is a folder"):
        check_outputs([(tmp_path, "-o")], overwrite=True)


def test_atomic_output_renames_into_place_with_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_output(tmp_path / "sub" / "out.csv") as staging:
            assert staging.parent == tmp_path / "sub"
            assert staging.name.startswith(".out.csv.tmp-")
            staging.write_text("a,b\n")
            staging.chmod(0o600)  # as writers that make owner-only files do
            assert not (tmp_path / "sub" / "out.csv").exists()
    finally:
        os.umask(previous)
    assert (tmp_path / "sub" / "out.csv").read_text() == "a,b\n"
    assert (tmp_path / "sub" / "out.csv").stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path / "sub") == ["out.csv"]


@pytest.mark.parametrize("interrupt", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path, interrupt):
    final = tmp_path / "out.csv"
    final.write_text("old")
    with pytest.raises(type(interrupt)):
        with atomic_output(final) as staging:
            staging.write_text("half")
            raise interrupt
    assert final.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_a_folder_is_replaced_as_a_whole(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("old")
    with atomic_output(tmp_path / "run", folder=True) as staging:
        (staging / "new.txt").write_text("new")
    assert os.listdir(tmp_path / "run") == ["new.txt"]
    assert os.listdir(tmp_path) == ["run"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".out.csv.tmp-{_dead_pid()}-0123abcd"
    stale.write_text("killed mid-write")
    live = tmp_path / f".out.csv.tmp-{os.getppid()}-0123abcd"  # a running process: its write is in progress
    live.write_text("still writing")
    unrelated = tmp_path / f".other.csv.tmp-{_dead_pid()}-0123abcd"
    unrelated.write_text("not ours to judge")
    with atomic_output(tmp_path / "out.csv") as staging:
        staging.write_text("new")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.csv", live.name, unrelated.name])
    assert remove_stale_temporaries(tmp_path / "other.csv") == [unrelated]


def test_raise_on_sigterm_restores_the_previous_handler():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with raise_on_sigterm():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(SystemExit) as exit_info:
            handler(signal.SIGTERM, None)
        assert exit_info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


WRITER = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from diffusers_videovae.paths import atomic_output

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner ignores SIGINT
    final = Path(sys.argv[1])
    with atomic_output(final) as staging, staging.open("w") as handle:
        handle.write("half of the new file")
        handle.flush()
        (final.parent / "started").touch()
        time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path, signum):
    final = tmp_path / "out.csv"
    final.write_text("old")
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "started", child)
        child.send_signal(signum)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert child.returncode != 0
    assert final.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "started"]


def _wait_for(marker: Path, child: subprocess.Popen, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)


def test_the_converter_refuses_an_output_folder_that_reaches_its_checkpoint_through_a_symlink(tmp_path):
    from diffusers_videovae.checkpoints._common import check_output_dir

    (tmp_path / "release").mkdir()
    checkpoint = tmp_path / "release" / "model.pth"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "out").symlink_to(tmp_path / "release")
    with pytest.raises(FileExistsError, match="it holds the checkpoint being converted"):
        check_output_dir(tmp_path / "out", overwrite=True, protect=[checkpoint])
