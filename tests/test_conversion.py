"""The conversion driver as a user meets it: one-line errors, no data loss, clean interruption, the user's umask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT, reference_dir

from diffusers_videovae import checkpoints, cli
from diffusers_videovae.checkpoints import CheckpointError, convert_original, run_conversion_script
from diffusers_videovae.checkpoints._common import save_pretrained_atomic


def _ivvae_args(output, *extra):
    ref = reference_dir("ivvae")
    return [
        "--checkpoint",
        str(ref / "tiny_original.pth"),
        "--original-config",
        str(ref / "tiny_config.json"),
        "--output",
        str(output),
        *extra,
    ]


def _one_line_error(capsys, model_type, argv):
    code = run_conversion_script(model_type, [str(arg) for arg in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    prefix = f"convert_{model_type}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix) :].strip()


# ---------------------------------------------------------------- another model's checkpoint is named


@pytest.mark.parametrize(
    "model_type, other, checkpoint, name",
    [
        ("ivvae", "opensora", "tiny_original/model.safetensors", "an Open-Sora 1.2 VAE"),
        ("odvae", "ivvae", "tiny_original.pth", "an IV-VAE"),
        ("opensora", "odvae", "tiny_original.ckpt", "an OD-VAE"),
    ],
)
def test_another_models_checkpoint_is_named_with_its_converter(model_type, other, checkpoint, name):
    path = reference_dir(other) / checkpoint
    with pytest.raises(CheckpointError) as info:
        convert_original(model_type, path)
    message = str(info.value)
    assert f"this looks like {name}" in message and f"use conversion/convert_{other}.py" in message
    assert "\n" not in message, "one sentence, not a list of unknown keys"


# ---------------------------------------------------------------- ordinary mistakes: one line, like `videovae convert`


def _mistakes(tmp_path):
    ref = reference_dir("ivvae")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((ref / "tiny_original.pth").read_bytes()[:20_000])
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    opensora = reference_dir("opensora") / "tiny_original" / "model.safetensors"
    return {
        "wrong model": (["--checkpoint", opensora, "--output", tmp_path / "o1"], "looks like an Open-Sora 1.2 VAE"),
        "truncated": (["--checkpoint", cut, "--output", tmp_path / "o2"], "truncated or corrupt"),
        "non-empty output": (_ivvae_args(full), "exists and is not empty"),
        "non-empty output, --overwrite": (_ivvae_args(full, "--overwrite"), "files that a conversion does not write"),
        "output is a file": (_ivvae_args(a_file), "is a file, not a folder"),
        "unknown variant": (_ivvae_args(tmp_path / "o3", "--variant", "z99"), "Unknown ivvae variant 'z99'"),
    }


@pytest.mark.parametrize(
    "mistake",
    [
        "wrong model",
        "truncated",
        "non-empty output",
        "non-empty output, --overwrite",
        "output is a file",
        "unknown variant",
    ],
)
def test_ordinary_mistakes_give_one_line_and_the_same_line_as_videovae_convert(tmp_path, capsys, mistake):
    argv, expected = _mistakes(tmp_path)[mistake]
    message = _one_line_error(capsys, "ivvae", argv)
    assert expected in message
    assert cli.main(["convert", "ivvae", *map(str, argv)]) == 1
    assert capsys.readouterr().err == f"videovae convert: error: {message}\n"
    assert (tmp_path / "full" / "mine.txt").read_text() == "mine"
    assert not any(name.startswith("o") for name in os.listdir(tmp_path)), "nothing written"


def test_the_conversion_script_itself_prints_one_line_and_exits_1(tmp_path):
    (tmp_path / "a_file").write_text("x")
    script = REPO_ROOT / "conversion" / "convert_ivvae.py"
    result = subprocess.run(
        [sys.executable, str(script), *_ivvae_args(tmp_path / "a_file")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert result.stderr.endswith("is a file, not a folder; choose another path.\n")
    assert result.stderr.count("\n") == 1, result.stderr


def test_output_paths_are_checked_before_the_checkpoint_is_read(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    argv = ["--checkpoint", tmp_path / "does-not-exist.pth", "--output", tmp_path / "a_file" / "model"]
    assert "a_file is a file, not a folder" in _one_line_error(capsys, "ivvae", argv)


# ---------------------------------------------------------------- --overwrite deletes only what we wrote


def test_overwrite_replaces_a_previous_conversion(tmp_path, capsys):
    output = tmp_path / "out"
    assert run_conversion_script("ivvae", _ivvae_args(output)) == 0
    (output / "config.json").write_text((output / "config.json").read_text().replace("{", '{"marker": 1,', 1))
    assert run_conversion_script("ivvae", _ivvae_args(output, "--overwrite")) == 0
    assert '"marker"' not in (output / "config.json").read_text()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_overwrite_never_deletes_the_source_checkpoint_in_the_output_folder(tmp_path, capsys):
    ref = reference_dir("ivvae")
    folder = tmp_path / "release"
    folder.mkdir()
    source = folder / "tiny_original.pth"
    source.write_bytes((ref / "tiny_original.pth").read_bytes())
    argv = ["--checkpoint", source, "--original-config", ref / "tiny_config.json", "--output", folder, "--overwrite"]
    assert "holds the checkpoint being converted" in _one_line_error(capsys, "ivvae", argv)
    assert source.read_bytes() == (ref / "tiny_original.pth").read_bytes()


# ---------------------------------------------------------------- permissions follow the umask


def test_converted_folder_and_files_follow_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        output = checkpoints.convert_to_folder(
            "ivvae",
            reference_dir("ivvae") / "tiny_original.pth",
            tmp_path / "out",
            original_config=reference_dir("ivvae") / "tiny_config.json",
            verbose=False,
        )
    finally:
        os.umask(previous)
    assert oct(output.stat().st_mode & 0o777) == oct(0o775)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in output.iterdir()}
    assert modes == {name: oct(0o664) for name in ("config.json", "diffusion_pytorch_model.safetensors", "README.md")}


# ---------------------------------------------------------------- interrupted conversions

_SLOW_SAVE = textwrap.dedent(
    """
    import sys, time
    from diffusers_videovae.checkpoints._common import save_pretrained_atomic

    class SlowModel:
        def save_pretrained(self, path, **kwargs):
            (path / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
            print("saving", flush=True)
            time.sleep(120)

    save_pretrained_atomic(SlowModel(), sys.argv[1])
    """
)


def _interrupted_save(output, sig) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(output)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    try:
        assert process.stdout.readline().strip() == "saving"
        process.send_signal(sig)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.stdout.close()
    return process.pid


def _staging_dirs(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".out.tmp-"))


def test_sigterm_during_a_save_removes_the_staging_folder(tmp_path):
    _interrupted_save(tmp_path / "out", signal.SIGTERM)
    assert _staging_dirs(tmp_path) == []
    assert not (tmp_path / "out").exists()


class _Model:
    def save_pretrained(self, path, **kwargs):
        (path / "config.json").write_text('{"_class_name": "AutoencoderKLIVVAE"}')


def test_a_rerun_removes_only_stale_staging_folders_of_ours(tmp_path):
    dead_pid = _interrupted_save(tmp_path / "out", signal.SIGKILL)
    left = _staging_dirs(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".out.tmp-{dead_pid}-"), "SIGKILL cannot clean up"
    alive = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"  # a save in progress in a live process
    alive.mkdir()
    users = tmp_path / ".out.tmp-notes"  # not our name pattern
    users.mkdir()
    save_pretrained_atomic(_Model(), tmp_path / "out")
    assert _staging_dirs(tmp_path) == sorted([alive.name, users.name])
    assert (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- what is wrong with a checkpoint, in one line


def _with_an_integer_weight(model_type: str, tmp_path) -> tuple[list, str]:
    """A tiny original file of `model_type` with its first float weight stored as int64, and converter args."""
    import torch

    ref = reference_dir(model_type)
    name, config = {
        "ivvae": ("tiny_original.pth", "tiny_config.json"),
        "odvae": ("tiny_original.ckpt", "tiny_config.json"),
        "reducio": ("tiny_original.ckpt", "tiny_config.yaml"),
    }[model_type]
    loaded = torch.load(ref / name, weights_only=True)
    state = loaded.get("state_dict", loaded)
    key = next(key for key, value in state.items() if value.is_floating_point() and value.ndim > 1)
    state[key] = state[key].long()
    path = tmp_path / name
    torch.save(loaded, path)
    return ["--checkpoint", path, "--original-config", ref / config, "--output", tmp_path / "out"], key


@pytest.mark.parametrize("model_type", ["ivvae", "odvae", "reducio"])
def test_an_integer_tensor_where_float_weights_belong_is_named_in_one_line(tmp_path, capsys, model_type):
    argv, key = _with_an_integer_weight(model_type, tmp_path)
    message = _one_line_error(capsys, model_type, argv)
    assert "holds integer tensors where the model has floating point weights" in message
    assert "torch.int64" in message and message.count(" (torch.int64)") == 1
    assert cli.main(["convert", model_type, *map(str, argv)]) == 1
    assert capsys.readouterr().err == f"videovae convert: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_custom_checkpoint_without_its_config_says_which_variant_was_tried(tmp_path, capsys):
    checkpoint = reference_dir("odvae") / "tiny_original.ckpt"
    argv = ["--checkpoint", checkpoint, "--output", tmp_path / "out"]
    message = _one_line_error(capsys, "odvae", argv)
    assert "tiny_original.ckpt does not fit the model of the released odvae variant 'v1.2.0' that was tried" in message
    assert "242 shape mismatch(es); e.g. decoder.conv_in.conv.bias: checkpoint (32,) vs model (512,)" in message
    assert "A custom model needs its original config: pass --original-config" in message
    assert run_conversion_script("odvae", [*map(str, argv), "--verbose"]) == 1
    verbose = capsys.readouterr().err
    assert verbose.startswith(f"convert_odvae: error: {message}\n242 shape mismatch(es):\n  decoder.conv_in.conv.bias")
    assert verbose.count("\n") > 40  # the full listing (40 keys shown, then a count of the rest)
    assert cli.main(["info", str(checkpoint)]) == 1
    assert capsys.readouterr().err == f"videovae info: error: {message}\n"


def test_the_dropped_keys_are_named(tmp_path, capsys):
    ref = reference_dir("reducio")
    argv = ["--checkpoint", ref / "tiny_original.ckpt", "--original-config", ref / "tiny_config.yaml"]
    assert run_conversion_script("reducio", [*map(str, argv), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert (
        "dropped 10 original key(s) on purpose (encoder_2d.mid.block_2.conv1.bias, "
        "encoder_2d.mid.block_2.conv1.weight, encoder_2d.mid.block_2.conv2.bias, ...; reasons in README.md)"
    ) in out


@pytest.mark.parametrize("model_type, config", [("odvae", "tiny_config.json"), ("reducio", "tiny_config.yaml")])
def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys, model_type, config):
    ref = reference_dir(model_type)
    bad = tmp_path / config
    bad.write_bytes((ref / config).read_bytes() + b"\xff\xfe")
    checkpoint = ref / "tiny_original.ckpt"
    argv = ["--checkpoint", checkpoint, "--original-config", bad, "--output", tmp_path / "out"]
    message = _one_line_error(capsys, model_type, argv)
    assert message.startswith(f"Config file {bad} is not UTF-8 text (byte {len((ref / config).read_bytes())}")


def test_a_python_config_that_is_not_utf8_is_named(tmp_path):
    from diffusers_videovae.checkpoints.cascadev import read_python_config

    bad = tmp_path / "config.py"
    bad.write_bytes(b"x = 1\n\xff")
    with pytest.raises(CheckpointError, match=f"Config file {bad} is not UTF-8 text"):
        read_python_config(bad)
