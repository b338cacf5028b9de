"""The local backend: atomic named objects, confined to its root."""

import os

import pytest

from pkvc.backends import open_backend
from pkvc.backends.base import Backend
from pkvc.backends.local import LocalBackend
from pkvc.errors import BackendError, UsageError


@pytest.fixture
def backend(tmp_path):
    return LocalBackend(tmp_path / "repo")


def test_store_load_slices_list_delete(backend):
    backend.store("packs/ab/abcdef", b"0123456789")
    backend.store("config", b"{}")
    assert backend.load("packs/ab/abcdef") == b"0123456789"
    assert backend.load("packs/ab/abcdef", 2, 3) == b"234"
    assert backend.load("packs/ab/abcdef", -4) == b"6789"
    assert [o.name for o in backend.list("packs/")] == ["packs/ab/abcdef"]
    assert backend.size("packs/ab/abcdef") == 10
    assert backend.exists("config")
    backend.delete("packs/ab/abcdef")
    backend.delete("packs/ab/abcdef")  # deleting twice is fine
    assert not backend.exists("packs/ab/abcdef")
    with pytest.raises(BackendError):
        backend.load("packs/ab/abcdef")


def test_temp_files_never_listed(backend):
    backend.store("keys/one", b"x")
    (backend.root / "keys" / ".tmp-leftover").write_bytes(b"half")
    assert [o.name for o in backend.list("keys/")] == ["keys/one"]


def test_store_replaces_atomically_and_leaves_no_temp(backend):
    backend.store("config", b"old")
    backend.store("config", b"new")
    assert backend.load("config") == b"new"
    assert sorted(os.listdir(backend.root)) == ["config"]


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../b", "", "a//b", ".tmp-x", "a/./b"])
def test_hostile_names_refused(backend, name):
    with pytest.raises(BackendError):
        backend.store(name, b"x")


def test_url_registry(tmp_path):
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    assert open_backend(f"file://{tmp_path}").root == tmp_path
    with pytest.raises(UsageError):
        open_backend("gopher://host/x")


def test_create_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "stuff").write_text("mine")
    with pytest.raises(Exception) as info:
        LocalBackend(tmp_path).create()
    assert "not empty" in str(info.value)


def test_an_upload_is_named_only_at_commit_and_leaves_no_temp(backend):
    backend.create(folders=("packs",))
    upload = backend.upload("packs")
    upload.write(b"head-")
    upload.write(memoryview(b"tail"))
    assert list(backend.list("packs/")) == []  # nothing visible before commit
    upload.commit("packs/ab/abcdef")
    upload.abort()  # after commit: nothing to drop
    assert backend.load("packs/ab/abcdef") == b"head-tail"
    assert [p.name for p in (backend.root / "packs").rglob(".tmp-*")] == []


def test_an_aborted_upload_leaves_nothing(backend):
    backend.create(folders=("packs",))
    upload = backend.upload("packs")
    upload.write(b"half a pack")
    upload.abort()
    assert list(backend.list("packs/")) == []
    assert list((backend.root / "packs").iterdir()) == []
    with pytest.raises(BackendError):
        backend.upload("../outside")


class _WholeObjectsOnly(LocalBackend):
    """A backend that only knows `store`: uploads go through the base class."""

    upload = Backend.upload


def test_a_backend_without_uploads_stores_the_whole_object_at_commit(tmp_path):
    backend = _WholeObjectsOnly(tmp_path / "repo")
    upload = backend.upload("packs")
    upload.write(b"one ")
    upload.write(bytearray(b"two"))
    assert not backend.exists("packs/cd/cdef")
    upload.commit("packs/cd/cdef")
    assert backend.load("packs/cd/cdef") == b"one two"
    dropped = backend.upload("packs")
    dropped.write(b"x")
    dropped.abort()
    assert [o.name for o in backend.list("packs/")] == ["packs/cd/cdef"]
