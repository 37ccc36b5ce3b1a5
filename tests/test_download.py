"""Download and extraction against an HTTP server on 127.0.0.1 serving archives built here."""

import hashlib
import io
import random
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from speechcnn.data.download import DownloadError, download_file, extract_tar, fetch_and_extract


class ArchiveServer:
    """Serves `files` (path -> bytes) with Range support; can cut the next N bodies halfway."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.cuts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.cuts > 0:  # a connection dropped mid-body
                    server.cuts -= 1
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ArchiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_tar(entries: list[tuple[str, bytes | None, str | None]]) -> bytes:
    """A .tar.gz of (name, file bytes, symlink target) entries; both None makes a folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD = make_tar(
    [
        ("./yes", None, None),
        ("./yes/a_nohash_0.wav", b"RIFF" + bytes(3000), None),
        ("./validation_list.txt", b"yes/a_nohash_0.wav\n", None),
        ("./link.txt", None, "validation_list.txt"),
    ]
    + [(f"./no/{i}.bin", random.Random(i).randbytes(2000), None) for i in range(40)]
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server():
    with ArchiveServer() as s:
        s.files["/data/sc.tar.gz"] = GOOD
        yield s


def test_download_and_extract(server, tmp_path):
    target = tmp_path / "data" / "sc"
    fetch_and_extract(f"{server.url}/data/sc.tar.gz", target, sha(GOOD), show_progress=False)
    assert (target / "yes" / "a_nohash_0.wav").read_bytes() == b"RIFF" + bytes(3000)
    assert (target / "link.txt").read_text() == "yes/a_nohash_0.wav\n"
    assert len(list((target / "no").iterdir())) == 40
    # nothing else is left next to the target: no archive, part file or staging folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["sc"]


def test_cut_connection_is_resumed_with_range(server, tmp_path):
    server.cuts = 1
    dest = download_file(
        f"{server.url}/data/sc.tar.gz", tmp_path / "sc.tar.gz", sha(GOOD), show_progress=False
    )
    assert dest.read_bytes() == GOOD
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(GOOD) // 2}-"
    assert not (tmp_path / "sc.tar.gz.part").exists()


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    (tmp_path / "sc.tar.gz.part").write_bytes(GOOD[:1000])
    download_file(f"{server.url}/data/sc.tar.gz", tmp_path / "sc.tar.gz", sha(GOOD), retries=0)
    assert (tmp_path / "sc.tar.gz").read_bytes() == GOOD
    assert server.requests == [("/data/sc.tar.gz", "bytes=1000-")]


def test_giving_up_keeps_the_part_file_but_never_the_destination(server, tmp_path):
    server.cuts = 5
    with pytest.raises(DownloadError, match="kept .*sc.tar.gz.part"):
        download_file(f"{server.url}/data/sc.tar.gz", tmp_path / "sc.tar.gz", sha(GOOD), retries=1)
    assert not (tmp_path / "sc.tar.gz").exists()
    assert 0 < (tmp_path / "sc.tar.gz.part").stat().st_size < len(GOOD)


def test_wrong_checksum_is_refused_and_nothing_extracted(server, tmp_path):
    target = tmp_path / "sc"
    with pytest.raises(DownloadError, match="sha256"):
        fetch_and_extract(f"{server.url}/data/sc.tar.gz", target, "0" * 64, show_progress=False)
    assert list(tmp_path.iterdir()) == []  # no target, archive, part file or staging folder


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (("/etc/evil", b"x", None), "absolute path"),
        (("../evil", b"x", None), r"'\.\.'"),
        (("ok/../../evil", b"x", None), r"'\.\.'"),
        (("up", None, "../../outside"), "out of the target"),
        (("abs", None, "/etc/passwd"), "absolute path"),
    ],
)
def test_malicious_archive_is_refused(server, tmp_path, entry, why):
    bad = make_tar([("./fine.txt", b"fine", None), entry])
    server.files["/bad.tar.gz"] = bad
    target = tmp_path / "out" / "sc"
    with pytest.raises(DownloadError, match=f"refusing to extract.*{why}"):
        fetch_and_extract(f"{server.url}/bad.tar.gz", target, sha(bad), show_progress=False)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["bad.tar.gz"]  # kept, nothing else
    assert not (tmp_path / "evil").exists()


def test_extract_refuses_a_non_empty_target(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(GOOD)
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "mine.txt").write_text("user data")
    with pytest.raises(DownloadError, match="not empty"):
        extract_tar(archive, tmp_path / "sc")
    assert (tmp_path / "sc" / "mine.txt").read_text() == "user data"


def test_offline_error_says_what_failed_and_how_to_use_a_local_copy(tmp_path):
    with ArchiveServer() as s:
        url = f"{s.url}/x.tar.gz"
    # the server is shut down: connection refused, as offline
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "x.tar.gz", retries=0, timeout=2)
    message = str(info.value)
    assert url in message and "--data.root" in message and "mirror" in message


def test_an_existing_verified_archive_is_reused(server, tmp_path):
    (tmp_path / "sc.tar.gz").write_bytes(GOOD)
    download_file(f"{server.url}/data/sc.tar.gz", tmp_path / "sc.tar.gz", sha(GOOD))
    assert server.requests == []


def tar_folder(folder) -> bytes:
    """A .tar.gz of a folder's contents with './' names, as the Speech Commands archives are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"./{path.relative_to(folder).as_posix()}", recursive=False)
    return buffer.getvalue()


def test_data_module_downloads_a_missing_root(server, tmp_path, monkeypatch):
    from fakes import make_official_test_set, make_speech_commands

    from speechcnn.data import speech_commands
    from speechcnn.data.speech_commands import SpeechCommandsDataModule

    monkeypatch.setenv("SPEECHCNN_CACHE_DIR", str(tmp_path / "cache"))
    train = tar_folder(make_speech_commands(tmp_path / "src" / "sc", clips_per_word=4))
    test = tar_folder(make_official_test_set(tmp_path / "src" / "test", clips_per_class=1))
    server.files.update({"/m/sc.tar.gz": train, "/m/test.tar.gz": test})
    monkeypatch.setattr(speech_commands, "SPEECH_COMMANDS_SHA256", sha(train))
    monkeypatch.setattr(speech_commands, "TEST_SET_SHA256", sha(test))
    root, test_root = tmp_path / "data" / "sc", tmp_path / "data" / "sc_test"
    data = SpeechCommandsDataModule(
        root=str(root),
        test_root=str(test_root),
        download=True,
        url=f"{server.url}/m/sc.tar.gz",
        test_url=f"{server.url}/m/test.tar.gz",
        cache=False,
    )
    data.prepare_data()
    assert (root / "validation_list.txt").is_file() and (test_root / "_silence_").is_dir()
    assert sorted(p.name for p in root.parent.iterdir()) == ["sc", "sc_test"]  # no leftovers
    data.setup("test")
    assert len(data.clips["test"]) == 12
    server.requests.clear()
    data.prepare_data()  # valid folders: nothing fetched again
    assert server.requests == []


def test_download_refuses_to_overwrite_a_foreign_folder(server, tmp_path):
    from speechcnn.data.speech_commands import ensure_speech_commands

    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "thesis.tex").write_text("precious")
    with pytest.raises(DownloadError, match="not usable"):
        ensure_speech_commands(tmp_path / "sc", f"{server.url}/data/sc.tar.gz")
    assert server.requests == []


def recipe_data_settings() -> dict:
    import yaml

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "speech_commands.yaml"
    return dict(yaml.safe_load(recipe.read_text())["data"]["init_args"])


def test_a_mistyped_root_is_not_downloaded_but_named(server, tmp_path):
    from speechcnn.data.speech_commands import DataError, SpeechCommandsDataModule

    typo = tmp_path / "speech_comands_v0.02"
    settings = {**recipe_data_settings(), "root": str(typo), "url": f"{server.url}/data/sc.tar.gz"}
    data = SpeechCommandsDataModule(**settings, cache=False)
    data.prepare_data()
    assert server.requests == [] and not typo.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match=f"{typo} does not exist.*--data.download true"):
        data.setup("fit")
    with pytest.raises(ValueError, match="root must name the data set's folder, got ''"):
        SpeechCommandsDataModule(**{**settings, "root": ""})


def test_the_default_root_or_download_true_is_fetched(server, tmp_path, monkeypatch):
    from speechcnn.data.speech_commands import DEFAULT_ROOT, SpeechCommandsDataModule

    monkeypatch.chdir(tmp_path)
    url = f"{server.url}/data/sc.tar.gz"
    for root, download in [(DEFAULT_ROOT, None), ("elsewhere/sc", True)]:
        server.requests.clear()
        data = SpeechCommandsDataModule(root=root, download=download, url=url, cache=False)
        with pytest.raises(DownloadError):  # the served archive is no v0.02 folder
            data.prepare_data()
        assert [path for path, _ in server.requests] == ["/data/sc.tar.gz"]


def test_testing_never_downloads_a_given_test_root(server, tmp_path, speech_commands_root):
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import TrainerFn

    from speechcnn.data.speech_commands import DataError, SpeechCommandsDataModule

    typo = tmp_path / "speech_commands_tset_set"
    data = SpeechCommandsDataModule(
        root=str(speech_commands_root), test_root=str(typo), download=True,
        test_url=f"{server.url}/data/sc.tar.gz", cache=False, check=False,
    )  # fmt: skip
    data.trainer = pl.Trainer(logger=False)
    data.trainer.state.fn = TrainerFn.TESTING
    data.prepare_data()
    assert server.requests == [] and not typo.exists()
    with pytest.raises(DataError, match=f"test set folder {typo} does not exist"):
        data.setup("test")
