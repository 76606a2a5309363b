"""Release names, Hub links and original-release repos: fetched through the hosts' own clients, converted once.

Nothing here touches the network: a Hub cache is laid out exactly as huggingface_hub lays it
(`models--owner--name/refs/main` -> `snapshots/<commit>/...` -> `blobs/<hash>`) holding the tiny reference
checkpoints under the real repo ids and file names, and read with HF_HUB_OFFLINE=1. ModelScope is replaced at its
download call (`modelscope.snapshot_download`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, reference_dir

from diffusers_videovae import (
    AutoencoderCascadeV,
    AutoencoderKLIVVAE,
    AutoencoderKLODVAE,
    AutoencoderKLOpenSora,
    AutoencoderKLReducio,
    load_model,
)
from diffusers_videovae.checkpoints import CheckpointError
from diffusers_videovae.model_cache import MANIFEST, cache_root, list_entries
from diffusers_videovae.releases import RELEASES
from diffusers_videovae.sources import SourceError

ODVAE_REPO = "LanguageBind/Open-Sora-Plan-v1.2.0"
REDUCIO_REPO = "microsoft/Reducio-VAE"
OPENSORA_REPO = "hpcai-tech/OpenSora-VAE-v1.2"


def lay_out_hub_repo(cache: Path, repo: str, files: dict[str, Path], commit: str = "0" * 39 + "1") -> Path:
    """`files` (repo path -> local file) placed in `cache` as huggingface_hub stores a download of them."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection attempt fails the test loudly (huggingface_hub would otherwise turn it into 'offline')."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty offline Hub cache and an empty conversion cache, as the environment variables name them."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VIDEOVAE_CACHE", raising=False)
    # huggingface_hub read the environment when it was imported (earlier, by another test): follow it.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def odvae_hub(hub_cache) -> Path:
    ref = reference_dir("odvae")
    files = {"vae/checkpoint.ckpt": ref / "tiny_original.ckpt", "vae/config.json": ref / "tiny_config.json"}
    lay_out_hub_repo(hub_cache, ODVAE_REPO, files)
    return hub_cache


def odvae_reference() -> AutoencoderKLODVAE:
    ref = reference_dir("odvae")
    return AutoencoderKLODVAE.from_single_file(ref / "tiny_original.ckpt", original_config=ref / "tiny_config.json")


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    assert type(model) is type(reference)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


# -- the table ---------------------------------------------------------------------------------------------------


def test_the_release_table_names_every_published_variant():
    assert list(RELEASES) == [
        "ivvae:ivvae_z4_dim64",
        "ivvae:ivvae_z8_dim64",
        "ivvae:ivvae_z16_dim64",
        "ivvae:ivvae_z16_dim96",
        "odvae:v1.2.0",
        "odvae:v1.1.0",
        "opensora:v1.2",
        "reducio:ft4",
        "reducio:ft2",
        "cascadev:s1024.effn-f32",
    ]
    for release in RELEASES.values():
        assert release.size and release.license and release.compression, release.name
    assert RELEASES["odvae:v1.2.0"].subfolder == "vae"
    assert {s.host for s in RELEASES["ivvae:ivvae_z16_dim96"].sources} == {"modelscope"}
    cascadev = RELEASES["cascadev:s1024.effn-f32"]
    assert {s.repo for s in cascadev.sources} == {
        "ByteDance/CascadeV",
        "stabilityai/StableWurst",
        "stabilityai/stable-video-diffusion-img2vid-xt",
    }
    assert {s.role for s in cascadev.sources} == {"checkpoint", "effnet", "previewer", "svd_vae"}
    assert all(s.gated == (s.repo == "stabilityai/stable-video-diffusion-img2vid-xt") for s in cascadev.sources)


def test_an_unknown_release_name_names_the_known_variants(hub_cache):
    with pytest.raises(ValueError, match=r"No release called 'odvae:v9'; released odvae variants: odvae:v1\.2\.0"):
        load_model("odvae:v9")


# -- every form, equal to converting the same files locally --------------------------------------------------------


def test_a_release_name_loads_from_the_hub_cache(odvae_hub):
    assert_same_weights(load_model("odvae:v1.2.0"), odvae_reference())


def test_an_original_release_repo_with_subfolder_loads(odvae_hub):
    assert_same_weights(load_model(ODVAE_REPO, subfolder="vae"), odvae_reference())


@pytest.mark.parametrize(
    "link",
    [
        f"https://huggingface.co/{ODVAE_REPO}/blob/main/vae/checkpoint.ckpt",
        f"https://huggingface.co/{ODVAE_REPO}/resolve/main/vae/checkpoint.ckpt",
        f"{ODVAE_REPO}/vae/checkpoint.ckpt",
    ],
)
def test_from_single_file_takes_hub_links(odvae_hub, link):
    config = reference_dir("odvae") / "tiny_config.json"
    assert_same_weights(AutoencoderKLODVAE.from_single_file(link, original_config=config), odvae_reference())


def test_from_single_file_takes_a_release_name_of_its_own_class_only(odvae_hub):
    assert_same_weights(AutoencoderKLODVAE.from_single_file("odvae:v1.2.0"), odvae_reference())
    with pytest.raises(
        CheckpointError, match=r"odvae:v1\.2\.0 is an OD-VAE .* release: load it with AutoencoderKLODVAE"
    ):
        AutoencoderKLReducio.from_single_file("odvae:v1.2.0")


def test_a_link_to_another_site_is_refused_in_one_line():
    with pytest.raises(SourceError, match="is not a Hugging Face Hub file link"):
        AutoencoderKLODVAE.from_single_file("https://example.com/vae/checkpoint.ckpt")


def test_load_model_takes_a_hub_file_link(odvae_hub):
    config = reference_dir("odvae") / "tiny_config.json"
    model = load_model(f"https://huggingface.co/{ODVAE_REPO}/blob/main/vae/checkpoint.ckpt", original_config=config)
    assert_same_weights(model, odvae_reference())


def test_a_pinned_revision_reads_that_commit(odvae_hub):
    commit = "0" * 39 + "1"
    assert_same_weights(load_model("odvae:v1.2.0", revision=commit), odvae_reference())
    with pytest.raises(SourceError, match="not in the local cache"):
        load_model("odvae:v1.2.0", revision="f" * 40)


def test_reducio_repo_needs_a_variant_and_reads_each(hub_cache):
    ref = reference_dir("reducio")
    files = {
        name: ref / "tiny_original.ckpt" for name in ("reducio-ft4-fs32-attn23.ckpt", "reducio-ft2-fs32-attn23.ckpt")
    }
    lay_out_hub_repo(hub_cache, REDUCIO_REPO, files)
    config = ref / "tiny_config.yaml"
    reference = AutoencoderKLReducio.from_single_file(ref / "tiny_original.ckpt", original_config=config)
    with pytest.raises(SourceError, match=r"holds the releases ft4, ft2: pick one with variant="):
        load_model(REDUCIO_REPO, original_config=config)
    assert_same_weights(load_model(REDUCIO_REPO, variant="ft2", original_config=config), reference)
    assert_same_weights(load_model("reducio:ft4", original_config=config), reference)


def test_opensora_release_reads_config_and_safetensors(hub_cache):
    ref = reference_dir("opensora")
    files = {
        "config.json": ref / "tiny_original" / "config.json",
        "model.safetensors": ref / "tiny_original" / "model.safetensors",
    }
    lay_out_hub_repo(hub_cache, OPENSORA_REPO, files)
    spatial = ref / "tiny_spatial_vae" / "vae" / "config.json"
    reference = AutoencoderKLOpenSora.from_single_file(
        ref / "tiny_original" / "model.safetensors",
        original_config=ref / "tiny_original" / "config.json",
        spatial_config=spatial,
    )
    assert_same_weights(load_model("opensora:v1.2", spatial_config=spatial), reference)
    assert_same_weights(load_model(OPENSORA_REPO, spatial_config=spatial), reference)


def test_an_unlisted_repo_holding_one_original_checkpoint_is_recognised(hub_cache):
    ref = reference_dir("odvae")
    files = {"checkpoint.ckpt": ref / "tiny_original.ckpt", "config.json": ref / "tiny_config.json"}
    lay_out_hub_repo(hub_cache, "someone/my-odvae", files)
    assert_same_weights(load_model("someone/my-odvae"), odvae_reference())


def test_our_converted_folder_on_the_hub_loads_with_from_pretrained(hub_cache, tmp_path, monkeypatch):
    import diffusers_videovae.checkpoints as checkpoints

    reference = odvae_reference()
    reference.save_pretrained(tmp_path / "converted")
    folder = tmp_path / "converted"
    lay_out_hub_repo(hub_cache, "someone/odvae-diffusers", {p.name: p for p in folder.iterdir()})
    monkeypatch.setattr(checkpoints, "load_original_model", _must_not_convert)
    assert_same_weights(load_model("someone/odvae-diffusers"), reference)
    assert list_entries() == []


def test_ivvae_comes_from_modelscope_through_its_download_call(hub_cache, tmp_path, monkeypatch):
    import modelscope  # in the test extra: this path must be tested, not skipped

    ref = reference_dir("ivvae")
    folder = tmp_path / "modelscope" / "wpy1999" / "iv-vae"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "ivvae_z16_dim64.pth").write_bytes((ref / "tiny_original.pth").read_bytes())
    asked = []

    def snapshot_download(model_id, **kwargs):
        asked.append((model_id, kwargs))
        return str(folder)

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    config = ref / "tiny_config.json"
    model = load_model("ivvae:ivvae_z16_dim64", original_config=config)
    assert_same_weights(model, AutoencoderKLIVVAE.from_single_file(ref / "tiny_original.pth", original_config=config))
    assert asked[0][0] == "wpy1999/iv-vae"
    assert asked[0][1]["allow_file_pattern"] == ["ivvae_z16_dim64.pth", "weights/ivvae_z16_dim64.pth"]
    assert asked[0][1]["local_files_only"] is True  # HF_HUB_OFFLINE=1 keeps ModelScope offline too


def test_offline_an_uncached_modelscope_file_names_it_and_the_fetch_command(hub_cache, monkeypatch):
    import modelscope  # in the test extra: this path must be tested, not skipped

    def snapshot_download(model_id, **kwargs):
        raise ValueError("Cannot find the requested files in the cached path and outgoing traffic has been disabled.")

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    with pytest.raises(SourceError) as error:
        load_model("ivvae:ivvae_z8_dim64")
    message = str(error.value)
    assert message.startswith("modelscope:wpy1999/iv-vae/ivvae_z8_dim64.pth is not in the local cache")
    assert message.endswith("videovae cache fetch ivvae:ivvae_z8_dim64") and "\n" not in message


def test_without_modelscope_one_line_names_the_extra(hub_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(SourceError, match=r"pip install diffusers-videovae\[modelscope\]"):
        load_model("ivvae:ivvae_z4_dim64")


@pytest.fixture
def cascadev_hub(hub_cache, tmp_path) -> dict[str, Path]:
    from _cascadev_weights import hashed_state_dict
    from safetensors.torch import save_file

    ref = reference_dir("cascadev")
    side = {}
    for name in ("effnet_encoder", "previewer"):
        side[name] = tmp_path / f"{name}.safetensors"
        save_file(hashed_state_dict(ref / f"weights_{name}.json", verify=False), str(side[name]))
    lay_out_hub_repo(hub_cache, "ByteDance/CascadeV", {"s1024.effn-f32.pth": ref / "tiny_original.pth"})
    lay_out_hub_repo(
        hub_cache,
        "stabilityai/StableWurst",
        {"effnet_encoder.safetensors": side["effnet_encoder"], "previewer.safetensors": side["previewer"]},
    )
    svd = ref / "tiny_svd_vae"
    lay_out_hub_repo(
        hub_cache,
        "stabilityai/stable-video-diffusion-img2vid-xt",
        {
            "vae/config.json": svd / "config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors": svd / "diffusion_pytorch_model.safetensors",
        },
    )
    return side


def test_cascadev_name_gathers_four_files_from_three_repos(cascadev_hub):
    ref = reference_dir("cascadev")
    config = ref / "tiny_config.py"
    model = load_model("cascadev:s1024.effn-f32", original_config=config)
    reference = AutoencoderCascadeV.from_single_file(
        ref / "tiny_original.pth",
        original_config=config,
        effnet=cascadev_hub["effnet_encoder"],
        previewer=cascadev_hub["previewer"],
        svd_vae=ref / "tiny_svd_vae",
    )
    assert_same_weights(model, reference)


def _http_error(error_class, status: int):
    try:
        import httpx2 as httpx
    except ImportError:  # huggingface_hub < 2 raises its HTTP errors with a requests response
        import requests

        response = requests.Response()
        response.status_code = status
        return error_class(f"{status} Client Error", response=response)
    request = httpx.Request("GET", "https://huggingface.co/api/models/x")
    return error_class(f"{status} Client Error", response=httpx.Response(status, request=request))


def test_a_gated_repo_says_to_accept_its_licence_and_log_in(hub_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def download(repo_id, filename, **kwargs):
        raise _http_error(GatedRepoError, 401)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(SourceError) as error:
        load_model("cascadev:s1024.effn-f32")
    message = str(error.value)
    assert "\n" not in message
    assert "is a gated repo: accept its licence at https://huggingface.co/ByteDance/CascadeV and log in" in message


def test_a_wrong_repo_is_one_line(hub_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(repo_id, *args, **kwargs):
        raise _http_error(RepositoryNotFoundError, 404)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_found)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", not_found)
    with pytest.raises(SourceError, match=r"^No Hub repo 'nobody/nothing' \(or it is private"):
        load_model("nobody/nothing")


def test_a_missing_file_is_one_line(hub_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    missing = getattr(hub_errors, "RemoteEntryNotFoundError", hub_errors.EntryNotFoundError)

    def download(repo_id, filename, **kwargs):
        raise _http_error(missing, 404)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(SourceError, match=r"^Hub repo someone/vae has no file 'nope\.ckpt' at revision 'v2'\.$"):
        AutoencoderKLODVAE.from_single_file("https://huggingface.co/someone/vae/blob/v2/nope.ckpt")


def test_cache_dir_and_local_files_only_reach_huggingface_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    ref = reference_dir("odvae")
    other = tmp_path / "elsewhere"
    lay_out_hub_repo(other, ODVAE_REPO, {"vae/checkpoint.ckpt": ref / "tiny_original.ckpt"})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # local_files_only alone keeps it off the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("VIDEOVAE_CACHE", str(tmp_path / "converted"))
    model = AutoencoderKLODVAE.from_single_file(
        f"{ODVAE_REPO}/vae/checkpoint.ckpt",
        original_config=ref / "tiny_config.json",
        cache_dir=other,
        local_files_only=True,
        torch_dtype=torch.float16,
    )
    assert next(model.parameters()).dtype == torch.float16
    reference = odvae_reference().state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key].half()), key


def test_a_repo_without_a_release_and_a_missing_folder_are_one_line(hub_cache, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    lay_out_hub_repo(hub_cache, "someone/notes", {"notes.txt": tmp_path / "notes.txt"})
    with pytest.raises(SourceError, match="holds neither a diffusers-videovae model nor an original checkpoint"):
        load_model("someone/notes")
    with pytest.raises(SourceError, match="has no folder 'vae'"):
        load_model("someone/notes", subfolder="vae")


def test_offline_a_release_not_cached_names_the_missing_file_and_the_fetch_command(hub_cache):
    with pytest.raises(SourceError) as error:
        load_model("reducio:ft2")
    assert str(error.value).startswith("microsoft/Reducio-VAE/reducio-ft2-fs32-attn23.ckpt is not in the local cache")
    assert str(error.value).endswith("videovae cache fetch reducio:ft2")


# -- converted once ------------------------------------------------------------------------------------------------


def _must_not_convert(*args, **kwargs):
    raise AssertionError("converted again")


def test_the_second_load_reads_the_converted_folder(odvae_hub, monkeypatch):
    import diffusers_videovae.checkpoints as checkpoints

    first = load_model("odvae:v1.2.0")
    ((entry, manifest, _),) = list_entries()
    assert entry.parent == Path(os.environ["HF_HOME"]) / "diffusers-videovae" / "converted"
    assert manifest["files"]["diffusion_pytorch_model.safetensors"] > 0
    monkeypatch.setattr(checkpoints, "load_original_model", _must_not_convert)
    second = load_model("odvae:v1.2.0", dtype=torch.bfloat16)
    assert next(second.parameters()).dtype == torch.bfloat16
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value.to(torch.bfloat16)), key


def test_a_new_upload_gives_a_new_entry(odvae_hub, tmp_path):
    load_model("odvae:v1.2.0")
    ref = reference_dir("odvae")
    state = torch.load(ref / "tiny_original.ckpt", weights_only=True)
    key = "decoder.conv_in.conv.weight"
    state["state_dict"][key] = state["state_dict"][key] + 1
    torch.save(state, tmp_path / "new.ckpt")
    files = {"vae/checkpoint.ckpt": tmp_path / "new.ckpt", "vae/config.json": ref / "tiny_config.json"}
    lay_out_hub_repo(odvae_hub, ODVAE_REPO, files, commit="2" * 40)  # refs/main now names the new commit
    model = load_model("odvae:v1.2.0")
    assert len(list_entries()) == 2
    reference = odvae_reference().state_dict()
    changed = [name for name, value in model.state_dict().items() if not torch.equal(value, reference[name])]
    assert len(changed) == 1
    assert torch.equal(model.state_dict()[changed[0]], reference[changed[0]] + 1)


def test_offline_a_kept_conversion_loads_after_its_originals_left_the_hub_cache(odvae_hub):
    import shutil

    load_model("odvae:v1.2.0")
    shutil.rmtree(odvae_hub / f"models--{ODVAE_REPO.replace('/', '--')}")  # e.g. `hf cache delete`
    assert_same_weights(load_model("odvae:v1.2.0"), odvae_reference())
    with pytest.raises(SourceError, match="videovae cache fetch odvae:v1.2.0"):  # other options: another conversion
        load_model("odvae:v1.2.0", original_config=reference_dir("odvae") / "tiny_config.json")
    with pytest.raises(SourceError, match="not in the local cache"):  # a pinned revision must be the one asked
        load_model("odvae:v1.2.0", revision="0" * 39 + "1")


@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "garbage_header"])
def test_a_damaged_entry_is_rebuilt(odvae_hub, damage):
    load_model("odvae:v1.2.0")
    ((entry, _, _),) = list_entries()
    weights = entry / "diffusion_pytorch_model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no_manifest":
        (entry / MANIFEST).unlink()
    else:
        data = bytearray(weights.read_bytes())
        data[8:40] = b"\xff" * 32
        weights.write_bytes(bytes(data))
    assert_same_weights(load_model("odvae:v1.2.0"), odvae_reference())
    ((entry_again, manifest, _),) = list_entries()
    assert entry_again == entry and manifest is not None


def test_cache_clear_removes_only_our_entries(odvae_hub, tmp_path, monkeypatch):
    from diffusers_videovae.cli import main

    monkeypatch.setenv("VIDEOVAE_CACHE", str(tmp_path / "mine"))
    load_model("odvae:v1.2.0")
    foreign = tmp_path / "mine" / "my-notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert len(list_entries()) == 1
    assert main(["cache", "clear"]) == 0
    assert list_entries() == []
    assert (foreign / "keep.txt").read_text() == "mine"


def test_a_conversion_waits_while_another_process_holds_the_entry_lock(odvae_hub, tmp_path, monkeypatch):
    import threading

    from filelock import FileLock

    monkeypatch.setenv("VIDEOVAE_CACHE", str(tmp_path / "first"))
    load_model("odvae:v1.2.0")
    ((entry, _, _),) = list_entries()
    second = tmp_path / "second"
    second.mkdir()
    monkeypatch.setenv("VIDEOVAE_CACHE", str(second))
    lock = FileLock(str(second / f".{entry.name}.lock"))
    lock.acquire()
    loaded = {}
    thread = threading.Thread(target=lambda: loaded.setdefault("model", load_model("odvae:v1.2.0")))
    try:
        thread.start()
        thread.join(timeout=3)
        assert thread.is_alive() and not (second / entry.name).exists()
    finally:
        lock.release()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert_same_weights(loaded["model"], odvae_reference())


def test_cache_fetch_then_list_shows_the_entry(odvae_hub, capsys):
    from diffusers_videovae.cli import main

    assert main(["cache", "fetch", ODVAE_REPO, "--subfolder", "vae"]) == 0
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    ((entry, _, _),) = list_entries()
    assert f"  {entry.name}  " in out and "complete" in out and entry.name.startswith("odvae-v1.2.0-")


def test_two_processes_loading_one_name_at_once_both_load_it_and_one_entry_is_written(odvae_hub, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VIDEOVAE_CACHE": str(tmp_path / "converted")}
    script = (
        "import sys, torch; from diffusers_videovae import load_model; m = load_model('odvae:v1.2.0'); "
        "print(sum(float(p.double().sum()) for p in m.parameters()))"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    expected = sum(float(p.detach().double().sum()) for p in odvae_reference().parameters())
    assert [float(out) for out, _ in outputs] == [pytest.approx(expected, rel=0, abs=0)] * 2
    entries = [p for p in (tmp_path / "converted").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / MANIFEST).is_file()


# -- errors, dtype, CLI ----------------------------------------------------------------------------------------------


def test_a_folder_with_an_invalid_config_json_says_so(tmp_path):
    odvae_reference().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text('{"_class_name": "AutoencoderKLODVAE",')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_model(tmp_path / "model")


def test_a_hub_repo_with_an_invalid_config_json_says_so_unless_it_holds_a_known_release(hub_cache, tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    ref = reference_dir("reducio")
    lay_out_hub_repo(hub_cache, "someone/broken", {"config.json": bad})
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_model("someone/broken")
    files = {"config.json": bad, "reducio-ft4-fs32-attn23.ckpt": ref / "tiny_original.ckpt"}
    lay_out_hub_repo(hub_cache, REDUCIO_REPO, files)
    config = ref / "tiny_config.yaml"
    reference = AutoencoderKLReducio.from_single_file(ref / "tiny_original.ckpt", original_config=config)
    assert_same_weights(load_model(REDUCIO_REPO, variant="ft4", original_config=config), reference)


def test_torch_dtype_still_works_with_diffusers_deprecation_message(tmp_path):
    odvae_reference().save_pretrained(tmp_path / "model")
    with pytest.warns(FutureWarning) as caught:
        model = load_model(tmp_path / "model", torch_dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16
    assert [str(w.message) for w in caught if w.category is FutureWarning] == [
        "`torch_dtype` is deprecated and will be removed in version 1.0.0. Please use `dtype` instead."
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert next(load_model(tmp_path / "model", dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="You have passed both `dtype` and `torch_dtype`"):
        load_model(tmp_path / "model", dtype=torch.float16, torch_dtype=torch.float16)


def test_the_installed_diffusers_gets_the_dtype_argument_it_takes():
    import diffusers
    from packaging.version import Version

    from diffusers_videovae.loaders import dtype_kwargs

    name = "dtype" if Version(Version(diffusers.__version__).base_version) >= Version("0.42") else "torch_dtype"
    assert dtype_kwargs(torch.float16) == {name: torch.float16}
    assert dtype_kwargs(None) == {}


def test_videovae_models_prints_the_table(capsys):
    from diffusers_videovae.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, release in RELEASES.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert release.size in line and release.license in line and release.main.repo in line


def test_every_model_option_takes_subfolder_revision_and_variant():
    from diffusers_videovae.cli import build_parser

    parser = build_parser()
    commands = {
        "reconstruct": [],
        "encode": ["in.mp4", "-o", "x.safetensors"],
        "eval": ["a.mp4"],
        "info": ["MODEL"],
        "cache-latents": ["--data", "videos", "-o", "out"],
        "train": ["--data", "videos", "-o", "out"],
        "cache": ["fetch", "MODEL"],
    }
    for command, rest in commands.items():
        args = parser.parse_known_args(
            [command, *rest, "-m", "M", "--subfolder", "vae", "--revision", "v1", "--variant", "ft2"]
        )[0]
        assert (args.subfolder, args.revision, args.variant) == ("vae", "v1", "ft2"), command


def test_cli_info_takes_a_release_name_offline(odvae_hub, capsys):
    from diffusers_videovae.cli import main

    assert main(["info", "odvae:v1.2.0", "--size", "9x32x32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "AutoencoderKLODVAE" in out and "odvae:v1.2.0" in out
    assert next(line for line in out.splitlines() if line.startswith("variant")).split()[-1] == "v1.2.0"


def test_cli_offline_missing_release_is_one_line(hub_cache, capsys):
    from diffusers_videovae.cli import main

    assert main(["info", "reducio:ft4", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("videovae cache fetch reducio:ft4")
    assert cache_root().name == "converted"
