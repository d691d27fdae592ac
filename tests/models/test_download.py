"""Download with a pinned commit, manifest writing/verification, and the error messages
(``snapshot_download`` is faked: no network here)."""
import json

import pytest
from huggingface_hub import errors as E

from marpipe.models import download as dl
from marpipe.models.download import (MANIFEST, DownloadError, ManifestError, ModelSource, check_revision,
                                     download_model, verify_manifest)

REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(files=None, exc=None, calls=None):
    files = files or {"model_index.json": "{}", "transformer/diffusion_pytorch_model.safetensors": "weights"}

    def snapshot_download(repo_id, revision, local_dir, token=None, **kw):
        if calls is not None:
            calls.append(dict(repo_id=repo_id, revision=revision, token=token, **kw))
        if exc is not None:
            raise exc
        for rel, text in files.items():
            p = __import__("pathlib").Path(local_dir) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return local_dir
    return snapshot_download


def hub_error(cls, msg="boom"):
    err = cls.__new__(cls)          # the real constructors want an HTTP response
    Exception.__init__(err, msg)
    return err


@pytest.mark.parametrize("rev,word", [(None, "no revision pinned"), ("main", "branch or tag"),
                                      ("v1.0", "branch or tag"), ("0123abc", "short hash"),
                                      (REV[:-1], "short hash")])
def test_revision_must_be_a_full_commit_hash(rev, word):
    with pytest.raises(DownloadError, match=word):
        check_revision(rev, "BAAI/nova-d48w1024-sd512")
    assert check_revision(REV) == REV and check_revision(REV.upper()) == REV


def test_download_writes_manifest_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    calls = []
    src = ModelSource("nova", "BAAI/nova-d48w1024-sd512", REV)
    folder = download_model(src, tmp_path, snapshot_download=fake_hub(calls=calls))
    assert folder == tmp_path / "nova"
    assert calls[0]["revision"] == REV and calls[0]["token"] == "hf_secret"
    entries = verify_manifest(folder)
    assert set(entries) == {"model_index.json", "transformer/diffusion_pytorch_model.safetensors"}
    assert json.loads((folder / dl.PIN_FILE).read_text()) == {"repo_id": src.repo_id, "revision": REV}
    assert "hf_secret" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())
    # a second call with the same pin does not touch the hub
    assert download_model(src, tmp_path, snapshot_download=fake_hub(exc=RuntimeError("no call"))) == folder


def test_manifest_names_the_changed_missing_or_extra_file(tmp_path):
    folder = download_model(ModelSource("m", "a/b", REV), tmp_path, snapshot_download=fake_hub())
    w = folder / "transformer/diffusion_pytorch_model.safetensors"
    w.write_text("tampered")
    with pytest.raises(ManifestError, match="transformer/diffusion_pytorch_model.safetensors does not match"):
        verify_manifest(folder)
    w.unlink()
    with pytest.raises(ManifestError, match="diffusion_pytorch_model.safetensors is listed .* but missing"):
        verify_manifest(folder)
    w.write_text("weights")
    (folder / "stray.bin").write_text("x")
    with pytest.raises(ManifestError, match="stray.bin is not listed"):
        verify_manifest(folder)
    (folder / "stray.bin").unlink()
    verify_manifest(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="did not finish"):
        verify_manifest(folder)


def test_interrupted_download_leaves_no_manifest_and_resumes(tmp_path):
    src = ModelSource("m", "a/b", REV)
    with pytest.raises(DownloadError, match="no network: ConnectionResetError.*resumes"):
        download_model(src, tmp_path, snapshot_download=fake_hub(exc=ConnectionResetError("reset")))
    assert not (tmp_path / "m" / MANIFEST).exists()
    download_model(src, tmp_path, snapshot_download=fake_hub())
    verify_manifest(tmp_path / "m")


@pytest.mark.parametrize("exc,match", [
    (hub_error(E.GatedRepoError), "gated repository"),
    (hub_error(E.RevisionNotFoundError), "has no revision " + REV),
    (hub_error(E.RepositoryNotFoundError), "repository a/b not found"),
    (E.LocalEntryNotFoundError("offline"), "cannot reach the Hugging Face Hub"),
    (hub_error(E.HfHubHTTPError, "500 server error"), "refused the download.*500"),
])
def test_hub_errors_become_clear_messages(tmp_path, exc, match, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DownloadError, match=match):
        download_model(ModelSource("m", "a/b", REV), tmp_path, snapshot_download=fake_hub(exc=exc))
    assert not (tmp_path / "m" / MANIFEST).exists()


def test_network_errors_of_the_http_client_become_no_network(tmp_path):
    ConnectError = type("ConnectError", (Exception,), {})   # the HTTP client's class, by name
    with pytest.raises(DownloadError, match="no network: ConnectError"):
        download_model(ModelSource("m", "a/b", REV), tmp_path,
                       snapshot_download=fake_hub(exc=ConnectError("down")))


def test_gated_message_mentions_hf_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DownloadError, match="set HF_TOKEN"):
        download_model(ModelSource("m", "a/b", REV), tmp_path, snapshot_download=fake_hub(exc=hub_error(E.GatedRepoError)))


def test_base_models_are_not_downloadable_until_pinned(tmp_path):
    src = ModelSource.from_dict("nova", dl.BASE_MODELS["nova"])
    with pytest.raises(DownloadError, match="no revision pinned for BAAI/nova-d48w1024-sd512"):
        download_model(src, tmp_path, snapshot_download=fake_hub())
