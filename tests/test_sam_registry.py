"""Checkpoint registry: verified downloads from a local HTTP server, clear errors, listing, loading."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from napari_medadapt.core.errors import ModelError
from napari_medadapt.core.jobs import JobCancelled, JobContext
from napari_medadapt.core.sam import registry

PAYLOAD = b"not really a checkpoint, but bytes with a known sha256\n" * 50


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDADAPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def server(tmp_path: Path):
    root = tmp_path / "served"
    root.mkdir()
    (root / "tiny.pth").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # keep test output quiet
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _entry(monkeypatch: pytest.MonkeyPatch, url: str | None, sha: str | None) -> str:
    base = registry.REGISTRY["sam-vit-b"]
    download = {**base.download, "filename": "tiny.pth", "url": url, "sha256": sha}
    entry = dataclasses.replace(base, name="tiny-test", download=download)
    monkeypatch.setitem(registry.REGISTRY, "tiny-test", entry)
    return "tiny-test"


def test_download_verifies_sha256(cache: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _entry(monkeypatch, server + "/tiny.pth", hashlib.sha256(PAYLOAD).hexdigest())
    path = registry.fetch_checkpoint(name)
    assert path == cache / "checkpoints" / "tiny.pth"
    assert path.read_bytes() == PAYLOAD
    cached = {row["name"]: row["cached"] for row in registry.list_checkpoints()}
    assert cached["tiny-test"] is True
    assert cached["sam-vit-h"] is False


def test_download_reports_progress_and_can_be_cancelled(
    cache: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _entry(monkeypatch, server + "/tiny.pth", hashlib.sha256(PAYLOAD).hexdigest())
    steps: list[tuple[int, int]] = []
    path = registry.fetch_checkpoint(name, ctx=JobContext(on_progress=lambda d, t, _m: steps.append((d, t))))
    assert path.read_bytes() == PAYLOAD and steps and steps[-1][0] == steps[-1][1]

    path.unlink()
    cancelled = JobContext()
    cancelled.cancel()
    with pytest.raises(JobCancelled):
        registry.fetch_checkpoint(name, ctx=cancelled)
    assert not any(p.is_file() for p in path.parent.iterdir()), "a cancelled download leaves no file"


def test_hash_mismatch_is_a_clear_error(cache: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _entry(monkeypatch, server + "/tiny.pth", "0" * 64)
    with pytest.raises(ModelError) as err:
        registry.fetch_checkpoint(name)
    message = str(err.value)
    assert "0" * 64 in message and server + "/tiny.pth" in message
    assert str(cache / "checkpoints" / "tiny.pth") in message
    assert not (cache / "checkpoints" / "tiny.pth").exists()


def test_server_down_is_a_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.pth"
    name = _entry(monkeypatch, url, hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(ModelError, match="Could not download") as err:
        registry.fetch_checkpoint(name)
    assert url in str(err.value) and "Expected sha256" in str(err.value)


def test_manual_checkpoint_without_hash_needs_explicit_opt_in(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _entry(monkeypatch, None, None)
    with pytest.warns(UserWarning, match="without checking"), pytest.raises(ModelError) as err:
        registry.fetch_checkpoint(name)
    assert "not downloaded yet" in str(err.value)
    target = cache / "checkpoints" / "tiny.pth"
    target.write_bytes(PAYLOAD)
    with pytest.warns(UserWarning):
        assert registry.fetch_checkpoint(name, known_hash=None) == target


def test_registry_pins_official_sam_hashes() -> None:
    for name in ("sam-vit-b", "sam-vit-l", "sam-vit-h"):
        entry = registry.get_entry(name)
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert len(entry.sha256) == 64
    assert registry.get_entry("medsam-vit-b").sha256 is None
    rows = {row["name"]: row for row in registry.list_checkpoints()}  # the report: the encoder as architecture
    assert rows["sam-vit-b"]["architecture"] == "vit_b" and rows["sam-vit-b"]["title"] == "SAM ViT-B (Meta)"
    with pytest.raises(ModelError, match="choose one of"):
        registry.get_entry("sam-vit-x")


def test_corrupt_checkpoint_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "sam_vit_b_broken.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="corrupt"):
        registry.load_sam(bad, device="cpu")


def test_a_users_card_with_weights_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promptable card of the user's with ``weights_file``: the weights are read beside the card and checked
    against its sha256, whatever the encoder (no download, nothing in the checkpoint cache)."""
    import json

    from napari_medadapt.core.models.registry import read_card

    (tmp_path / "my_sam.pth").write_bytes(PAYLOAD)
    card_path = tmp_path / "my_sam.json"
    card = {"kind": "promptable", "name": "my-sam", "architecture": {"encoder": "vit_b"}, "weights_file": "my_sam.pth",
            "weights_sha256": hashlib.sha256(PAYLOAD).hexdigest(), "license": "Apache-2.0"}  # fmt: skip
    card_path.write_text(json.dumps(card))
    entry = read_card(card_path)
    assert entry.bundled and entry.url is None and entry.title == "my-sam" and entry.source.startswith("bundled")
    monkeypatch.setitem(registry.REGISTRY, "my-sam", entry)
    assert registry.checkpoint_path("my-sam") == tmp_path / "my_sam.pth"
    assert registry._fetch("my-sam", None, None, False, None) == (tmp_path / "my_sam.pth", None)
    (tmp_path / "my_sam.pth").write_bytes(b"another file")
    with pytest.raises(ModelError, match="not the expected file"):
        registry.load_sam("my-sam", device="cpu")
    (tmp_path / "my_sam.pth").unlink()
    with pytest.raises(ModelError, match="weights of my-sam are missing"):
        registry.load_sam("my-sam", device="cpu")
