"""download_oxford_pet against a loopback server serving archives built from make_synthetic_pets: fresh download,
idempotence, resume, checksum failures, server errors, and never deleting what the user had; then course_data(), which
downloads when it finds no dataset and falls back to synthetic pets, under a banner, when it cannot."""
from __future__ import annotations

import shutil, socket, tarfile
from pathlib import Path

import pytest

import petseg.download, petseg.synthetic
from petseg.data import ATTRIBUTION, ChecksumError, DownloadError, OxfordPetDataset
from petseg.download import PETS_URL, archive_md5s, course_data, data_url, download_oxford_pet, file_md5


def _get(srv, root, **kw):
    return download_oxford_pet(root, base_url=srv.url, md5s=srv.md5s, progress=False, **kw)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_download(http_server, synthetic_root, tmp_path):
    root = _get(http_server, tmp_path / "data")
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "annotations.tar.gz", "images", "images.tar.gz"]
    for folder in ("images", "annotations"):
        assert _tree(root / folder) == _tree(synthetic_root / folder)
    assert [r for r in http_server.requests] == [("images.tar.gz", None), ("annotations.tar.gz", None)]
    assert len(OxfordPetDataset(root, "train")) == 18


def test_second_call_downloads_and_extracts_nothing(http_server, tmp_path):
    root = _get(http_server, tmp_path / "data")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    n = len(http_server.requests)
    http_server.fail_status = 500                       # any request now would fail
    assert _get(http_server, root) == root
    assert len(http_server.requests) == n
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_keep_archives_false_removes_only_what_it_downloaded(http_server, tmp_path):
    root = _get(http_server, tmp_path / "data", keep_archives=False)
    assert sorted(p.name for p in root.iterdir()) == ["annotations", "images"]


def test_resume_after_a_dropped_connection(http_server, archives, tmp_path):
    folder, md5s = archives
    size = (folder / "images.tar.gz").stat().st_size
    http_server.cut_after["images.tar.gz"] = size // 2
    with pytest.raises(DownloadError, match="resumes") as e:
        _get(http_server, tmp_path / "data")
    part = tmp_path / "data" / "images.tar.gz.part"
    assert str(part) in str(e.value) and part.stat().st_size == size // 2
    _get(http_server, tmp_path / "data")
    assert ("images.tar.gz", f"bytes={size // 2}-") in http_server.requests
    assert ("images.tar.gz", 206, size // 2) in http_server.served
    assert file_md5(tmp_path / "data" / "images.tar.gz") == md5s["images.tar.gz"]
    assert not part.exists() and (tmp_path / "data" / "images").is_dir()


def test_resume_of_a_truncated_partial_file(http_server, archives, tmp_path):
    folder, md5s = archives
    data = (folder / "annotations.tar.gz").read_bytes()
    root = tmp_path / "data"; root.mkdir()
    (root / "annotations.tar.gz.part").write_bytes(data[:1000])
    _get(http_server, root)
    assert ("annotations.tar.gz", "bytes=1000-") in http_server.requests        # a Range request was made...
    assert ("annotations.tar.gz", 206, 1000) in http_server.served              # ...and only the rest was sent
    assert file_md5(root / "annotations.tar.gz") == md5s["annotations.tar.gz"]


def test_server_ignoring_range_restarts_cleanly(http_server, archives, tmp_path):
    root = tmp_path / "data"; root.mkdir()
    (root / "images.tar.gz.part").write_bytes(b"x" * 500)      # junk: appending to it would break the checksum
    http_server.ignore_range = True
    _get(http_server, root)
    assert ("images.tar.gz", "bytes=500-") in http_server.requests
    assert file_md5(root / "images.tar.gz") == archives[1]["images.tar.gz"]


def test_complete_partial_file_is_used(http_server, archives, tmp_path):
    folder, md5s = archives
    root = tmp_path / "data"; root.mkdir()
    shutil.copy(folder / "images.tar.gz", root / "images.tar.gz.part")
    _get(http_server, root)                                     # the server answers 416: nothing left to send
    assert not any(name == "images.tar.gz" for name, *_ in http_server.served)
    assert (root / "images").is_dir()


def test_corrupted_archive_raises_and_is_kept_aside(archives, serve_folder, tmp_path):
    folder, md5s = archives
    bad = tmp_path / "bad_mirror"; shutil.copytree(folder, bad)
    data = bytearray((bad / "images.tar.gz").read_bytes()); data[100:110] = b"corrupted!"
    (bad / "images.tar.gz").write_bytes(bytes(data))
    srv = serve_folder(bad)
    root = tmp_path / "data"
    with pytest.raises(ChecksumError) as e:
        download_oxford_pet(root, base_url=srv.url, md5s=md5s, progress=False)
    msg, actual = str(e.value), file_md5(bad / "images.tar.gz")
    assert "images.tar.gz" in msg and md5s["images.tar.gz"] in msg and actual in msg
    aside = root / "images.tar.gz.corrupt"
    assert str(aside) in msg and aside.read_bytes() == bytes(data)
    assert not (root / "images").exists() and not (root / "images.tar.gz").exists()
    assert not (root / "images.tar.gz.part").exists()
    # a second failure keeps the first bad file too
    with pytest.raises(ChecksumError):
        download_oxford_pet(root, base_url=srv.url, md5s=md5s, progress=False)
    assert aside.exists() and (root / "images.tar.gz.corrupt.1").exists()
    # with a good server the next call succeeds, leaving the bad copies alone
    good = serve_folder(folder)
    download_oxford_pet(root, base_url=good.url, md5s=md5s, progress=False)
    assert (root / "images").is_dir() and aside.exists()


def test_bad_existing_archive_is_moved_aside_and_fetched_again(http_server, tmp_path):
    root = tmp_path / "data"; root.mkdir()
    (root / "images.tar.gz").write_bytes(b"a half-finished manual download")
    with pytest.warns(UserWarning, match="images.tar.gz"):
        _get(http_server, root)
    assert (root / "images.tar.gz.corrupt").read_bytes() == b"a half-finished manual download"
    assert (root / "images").is_dir()


def test_existing_good_archive_is_extracted_without_downloading(http_server, archives, tmp_path):
    root = tmp_path / "data"; root.mkdir()
    shutil.copy(archives[0] / "images.tar.gz", root)
    _get(http_server, root)
    assert [name for name, _ in http_server.requests] == ["annotations.tar.gz"]
    assert (root / "images").is_dir()


def test_nothing_the_user_had_is_deleted(http_server, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "my_cat.jpg").write_bytes(b"mine")
    (root / "notes.txt").write_text("keep me")
    (root / "annotations.tar.gz.corrupt").write_bytes(b"an old bad copy")
    before = _tree(root)
    _get(http_server, root)
    after = _tree(root)
    assert all(after[k] == v for k, v in before.items())           # every earlier file still there, unchanged
    assert sorted(p.name for p in (root / "images").iterdir()) == ["my_cat.jpg"]   # the user's folder is not touched
    assert [name for name, _ in http_server.requests] == ["annotations.tar.gz"]
    assert (root / "annotations" / "trainval.txt").is_file()


def test_archive_without_its_folder_is_not_extracted(synthetic_root, serve_folder, tmp_path):
    mirror = tmp_path / "mirror"; mirror.mkdir()
    with tarfile.open(mirror / "images.tar.gz", "w:gz") as tar:
        tar.add(synthetic_root / "images", arcname="pictures")
    srv = serve_folder(mirror)
    with pytest.raises(DownloadError, match="top-level images/"):
        download_oxford_pet(tmp_path / "data", base_url=srv.url,
                            md5s={"images.tar.gz": file_md5(mirror / "images.tar.gz")}, progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["images.tar.gz"]   # no half-extracted folder


def _check_hint(msg: str, url: str):
    assert url in msg, msg
    assert "base_url" in msg and "PETSEG_DATA_URL" in msg and "by hand" in msg, msg


def test_http_404(http_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        download_oxford_pet(tmp_path / "data", base_url=http_server.url + "/old", md5s=http_server.md5s, progress=False)
    _check_hint(str(e.value), http_server.url + "/old/images.tar.gz")


def test_http_500(http_server, tmp_path):
    http_server.fail_status = 500
    with pytest.raises(DownloadError, match="HTTP 500") as e:
        _get(http_server, tmp_path / "data")
    _check_hint(str(e.value), http_server.url + "/images.tar.gz")
    assert not (tmp_path / "data" / "images").exists()


def test_connection_refused(refused_url, tmp_path):
    with pytest.raises(DownloadError, match="Could not reach") as e:
        download_oxford_pet(tmp_path / "data", base_url=refused_url, progress=False)
    _check_hint(str(e.value), refused_url + "/images.tar.gz")


def test_environment_variable_sets_the_server(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PETSEG_DATA_URL", http_server.url + "/")
    download_oxford_pet(tmp_path / "data", md5s=http_server.md5s, progress=False)
    assert len(http_server.requests) == 2 and (tmp_path / "data" / "images").is_dir()
    assert data_url("http://elsewhere") == "http://elsewhere"          # the argument wins over the variable
    monkeypatch.delenv("PETSEG_DATA_URL")
    assert data_url() == PETS_URL


def test_md5s_for_a_mirror_from_the_environment(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("PETSEG_DATA_MD5S", ",".join(f"{n}={m}" for n, m in http_server.md5s.items()))
    download_oxford_pet(tmp_path / "data", base_url=http_server.url, progress=False)      # no md5s= argument
    assert (tmp_path / "data" / "annotations" / "trainval.txt").is_file()
    monkeypatch.setenv("PETSEG_DATA_MD5S", "images.tar.gz:0123")
    with pytest.raises(DownloadError, match="PETSEG_DATA_MD5S"):
        download_oxford_pet(tmp_path / "other", base_url=http_server.url, progress=False)
    assert archive_md5s("annotations.tar.gz=" + "A" * 32) == {**petseg.download.ARCHIVES, "annotations.tar.gz": "a" * 32}


# ---------------------------------------------------------------- course_data(): download, or synthetic with a banner

@pytest.fixture
def student(tmp_path, monkeypatch):
    "A folder with no dataset in or above it, not in a git checkout and not on Colab; tiny synthetic pets as the fallback."
    folder = tmp_path / "student"; folder.mkdir()
    monkeypatch.chdir(folder)
    for var in ("PETSEG_DATA", "PETSEG_DATA_URL", "PETSEG_DATA_MD5S", "PETSEG_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(petseg.download, "COLAB_CONTENT", tmp_path / "no-colab")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(petseg.synthetic, "SYNTHETIC_PETS", dict(n_trainval=3, n_test=1, size=16, seed=0))
    return folder


def _mirror_env(monkeypatch, srv):
    monkeypatch.setenv("PETSEG_DATA_URL", srv.url)
    monkeypatch.setenv("PETSEG_DATA_MD5S", ",".join(f"{n}={m}" for n, m in srv.md5s.items()))


def _assert_banner(out: str, *why: str):
    assert "SYNTHETIC" in out and "petseg download" in out, out
    assert all(w in out for w in why), out


def test_course_data_downloads_once_then_finds_it(student, http_server, monkeypatch, capsys):
    _mirror_env(monkeypatch, http_server)
    root = course_data()
    assert root == student / "data" / "oxford-pet" and len(OxfordPetDataset(root, "train")) == 18
    out = capsys.readouterr().out
    assert "Downloaded and verified Oxford-IIIT Pet" in out and ATTRIBUTION in out and "SYNTHETIC" not in out
    assert [name for name, _ in http_server.requests] == ["images.tar.gz", "annotations.tar.gz"]
    assert course_data() == root                                    # the next lesson: found, nothing downloaded
    assert "Using the full Oxford-IIIT Pet" in capsys.readouterr().out and len(http_server.requests) == 2


def test_course_data_downloads_to_the_repository_root(student, http_server, monkeypatch):
    (student / "repo" / ".git").mkdir(parents=True); (student / "repo" / "nbs").mkdir()
    monkeypatch.chdir(student / "repo" / "nbs")
    _mirror_env(monkeypatch, http_server)
    assert course_data(verbose=False) == student / "repo" / "data" / "oxford-pet"
    monkeypatch.chdir(student / "repo")                             # from another folder of the checkout: found
    assert course_data(verbose=False) == student / "repo" / "data" / "oxford-pet" and len(http_server.requests) == 2


def test_course_data_with_the_server_down_shows_the_banner(student, refused_url, monkeypatch, capsys):
    monkeypatch.setenv("PETSEG_DATA_URL", refused_url)
    root = course_data()
    assert root == student.parent / "cache" / "petseg" / "synthetic-pets"
    _assert_banner(capsys.readouterr().out, "Could not reach", f"--data-root {student / 'data' / 'oxford-pet'}")
    assert list(student.iterdir()) == []                            # no empty data/ folder left to mislead anyone


def test_course_data_interrupted_download_is_not_mistaken_and_resumes(student, http_server, archives, monkeypatch, capsys):
    _mirror_env(monkeypatch, http_server)
    size = (archives[0] / "annotations.tar.gz").stat().st_size
    http_server.cut_after["annotations.tar.gz"] = size // 2         # images arrive, annotations stop halfway
    assert course_data().name == "synthetic-pets"
    _assert_banner(capsys.readouterr().out, "stopped after")
    target = student / "data" / "oxford-pet"
    assert (target / "images").is_dir() and not (target / "annotations").exists()
    assert course_data() == target                                  # the next call resumes the annotations
    assert ("annotations.tar.gz", f"bytes={size // 2}-") in http_server.requests
    assert [n for n, _ in http_server.requests].count("images.tar.gz") == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_course_data_without_download_makes_no_request(student, http_server, monkeypatch, capsys, how):
    _mirror_env(monkeypatch, http_server)
    if how == "environment": monkeypatch.setenv("PETSEG_DOWNLOAD", "0")
    root = course_data(download=False) if how == "argument" else course_data()
    assert root.name == "synthetic-pets" and http_server.requests == []
    _assert_banner(capsys.readouterr().out, "download=False" if how == "argument" else "PETSEG_DOWNLOAD=0")
    assert not (student / "data").exists()


def test_course_data_gives_up_on_a_silent_server(student, monkeypatch, capsys):
    "A server that accepts the connection and never answers: the download's timeout ends the wait (shortened here)."
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0)); silent.listen(4)              # connections complete, nothing is ever sent
        monkeypatch.setenv("PETSEG_DATA_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(petseg.download, "DOWNLOAD_TIMEOUT", 0.5)
        assert course_data().name == "synthetic-pets"
    _assert_banner(capsys.readouterr().out, "the download failed")
