"""Manifests, downloads (against a local HTTP server), imports, open_dataset and the CLI."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.data import DataError, open_dataset
from harness.data import datasets as registry_module
from harness.data.datasets import Manifest, download_dataset, import_dataset, manifests
from harness.data.download import download_file
from harness.errors import HarnessError, UsageError

CSV = b"user_id,item_id,timestamp,state_label\n" + b"".join(
    b"u%d,i%d,%d,%d\n" % (k % 13, (k * 7) % 11, k * 10, int(k == 50)) for k in range(400))


class Server:
    """Serves ``files`` on 127.0.0.1 with Range support; knobs simulate failures."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cut_after: int | None = None  # close the connection after this many body bytes
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                owner.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and owner.ranges:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if owner.cut_after is not None:
                    payload = payload[: owner.cut_after]
                    owner.cut_after = None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HARNESS_DATA", str(home))
    return home


@pytest.fixture
def local_manifest(server, monkeypatch):
    """Point the 'wikipedia' manifest at the local server (no checksum in the manifest)."""
    server.files["/wikipedia.csv"] = CSV
    real = manifests()
    fake = dict(real)
    fake["wikipedia"] = Manifest(name="wikipedia", title="test", url=server.url + "/wikipedia.csv",
                                 filename="wikipedia.csv", format="jodie")
    monkeypatch.setattr(registry_module, "_MANIFESTS", fake)
    return fake["wikipedia"]


def test_shipped_manifests_are_complete():
    found = manifests()
    assert {"wikipedia", "reddit", "mooc", "lastfm", "lastfm-1k", "reddit-subreddits"} <= set(found)
    for m in found.values():
        assert m.url.startswith("http") and m.licence and m.citation.strip() and m.size
        assert m.format in registry_module.FORMATS
    assert found["reddit-subreddits"].session_gap == 1800
    assert found["lastfm-1k"].session_gap == 3600
    root = Path(__file__).resolve().parents[1]
    if (root / "datasets").exists():  # the repository's datasets/ shows the same files
        assert sorted(p.name for p in (root / "datasets").glob("*.toml")) == sorted(
            f"{n}.toml" for n in found)


def test_download_records_checksum_and_opens(server, local_manifest, data_home):
    with pytest.raises(HarnessError, match="harness datasets download wikipedia"):
        open_dataset("wikipedia")
    path = download_dataset("wikipedia", progress=False)
    assert path.read_bytes() == CSV and not path.with_name(path.name + ".part").exists()
    recorded = json.loads((data_home / "checksums.json").read_text())
    assert recorded["wikipedia"]["sha256"] == hashlib.sha256(CSV).hexdigest()
    dataset = open_dataset("wikipedia")
    assert dataset.name == "wikipedia" and dataset.sha256() == hashlib.sha256(CSV).hexdigest()
    stream = dataset.load()
    assert (stream.n_users, stream.n_items, len(stream)) == (13, 11, 400)
    assert dataset.session_gap == 3600


def test_changed_file_is_refused_after_first_download(server, local_manifest, data_home):
    download_dataset("wikipedia", progress=False)
    server.files["/wikipedia.csv"] = CSV + b"u1,i1,99999,0\n"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_dataset("wikipedia", progress=False, force=True)
    part = data_home / "datasets" / "wikipedia" / "wikipedia.csv.part"
    assert not part.exists()
    assert (data_home / "datasets" / "wikipedia" / "wikipedia.csv").read_bytes() == CSV


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = body = bytes(range(256)) * 4000
    server.cut_after = 300_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match="run the command again to resume"):
        download_file(server.url + "/f.bin", dest, progress=False)
    part = tmp_path / "f.bin.part"
    assert part.stat().st_size == 300_000 and not dest.exists()
    digest = download_file(server.url + "/f.bin", dest, progress=False,
                           sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert server.requests[-1]["range"] == "bytes=300000-"


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.files["/f.bin"] = body = b"x" * 100_000
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage!")
    download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_stale_partial_larger_than_file_restarts(server, tmp_path):
    server.files["/f.bin"] = body = b"y" * 1000
    (tmp_path / "f.bin.part").write_bytes(b"z" * 5000)
    download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def test_download_errors_are_one_line(server, tmp_path):
    with pytest.raises(DataError, match="answered 404"):
        download_file(server.url + "/missing", tmp_path / "m", progress=False)
    with pytest.raises(DataError, match="download failed"):
        download_file("http://127.0.0.1:9/none", tmp_path / "n", progress=False, timeout=2)


def test_manual_download_dataset_explains_import():
    with pytest.raises(HarnessError, match="harness datasets import PATH --name reddit-subreddits"):
        download_dataset("reddit-subreddits", progress=False)


def test_import_under_manifest_and_new_names(tmp_path, data_home):
    src = tmp_path / "copy.csv"
    src.write_bytes(CSV)
    import_dataset(src, "wikipedia")
    assert len(open_dataset("wikipedia").load()) == 400
    import_dataset(src, "mine")
    assert "mine" in registry_module.manifest_names()
    assert open_dataset("mine").load().n_users == 13


def test_import_of_a_bad_file_leaves_nothing(tmp_path, data_home):
    src = tmp_path / "bad.csv"
    src.write_bytes(b"u,i,t,l\na,b,1,0\na,b,x,0\n")
    with pytest.raises(DataError, match=r"bad.csv:3: timestamp 'x' is not a number"):
        import_dataset(src, "wikipedia")
    assert not (data_home / "datasets" / "wikipedia").exists()
    assert not (data_home / "cache").exists() or not any((data_home / "cache").iterdir())


def test_open_dataset_unknown_name_suggests():
    with pytest.raises(UsageError, match="did you mean 'wikipedia'"):
        open_dataset("wikipedai")
    with pytest.raises(UsageError, match="did you mean 'synthetic'"):
        open_dataset("synthetc")


def test_open_dataset_path_and_registered_generator(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(CSV)
    dataset = open_dataset(str(path))
    assert dataset.name == str(path) and len(dataset.load()) == 400
    synthetic = open_dataset("synthetic")
    assert synthetic.name == "synthetic" and synthetic.session_gap == 3600


def test_cli_list_info_import_download(server, local_manifest, tmp_path, capsys, data_home):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "wikipedia" in out and "not downloaded" in out and "synthetic-reddit" in out
    assert main(["datasets", "download", "wikipedia", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["datasets", "info", "wikipedia"]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "repeat" in out and "13" in out and "400" in out
    src = tmp_path / "m.csv"
    src.write_bytes(CSV)
    assert main(["datasets", "import", str(src), "--name", "mine"]) == 0
    assert main(["datasets", "info", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nope'" in err and err.count("\n") == 1


def test_table5_statistics_of_the_synthetic_default(capsys):
    assert main(["datasets", "info", "synthetic"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert "state changes" in header and "repeat" in header
    values = row.split()
    assert values[1:4] == ["300", "200", "20000"]


def test_stats_repeat_fraction_hand_example():
    from harness.data.datasets import dataset_stats
    from harness.interactions import Interactions

    s = Interactions.from_arrays([0, 1, 0, 0, 1], [5, 5, 5, 6, 5], np.arange(5.0),
                                 label=[0, 0, 1, 0, 0])
    stats = dataset_stats(s)
    assert stats["repeat_fraction"] == pytest.approx(2 / 5) and stats["state_changes"] == 1


def test_sources_use_https_where_the_host_offers_it():
    plain_http = {"mtg.upf.edu"}  # the address its dataset page gives; https not verified
    for m in manifests().values():
        host = m.url.split("/")[2]
        assert m.url.startswith("https://") or host in plain_http, m.url


def test_a_failed_download_leaves_no_empty_folder(server, local_manifest, data_home, monkeypatch):
    fake = dict(registry_module._MANIFESTS)
    fake["wikipedia"] = Manifest(name="wikipedia", title="test", url=server.url + "/missing",
                                 filename="wikipedia.csv", format="jodie")
    monkeypatch.setattr(registry_module, "_MANIFESTS", fake)
    with pytest.raises(DataError, match="answered 404"):
        download_dataset("wikipedia", progress=False)
    assert not (data_home / "datasets" / "wikipedia").exists()


def test_info_of_an_imported_file_describes_the_file_not_the_manifest(tmp_path, data_home, capsys):
    src = tmp_path / "copy.csv"
    src.write_bytes(CSV)
    assert main(["datasets", "import", str(src), "--name", "wikipedia"]) == 0
    capsys.readouterr()
    assert main(["datasets", "info", "wikipedia"]) == 0
    out = capsys.readouterr().out
    assert "500 MB" not in out and f"size: {len(CSV) / 1000:.1f} KB here" in out
    assert f"imported from {src.resolve()}" in out
    row = next(line for line in out.splitlines() if line.startswith("wikipedia "))
    assert row.split()[1:4] == ["13", "9", "400"] or row.split()[3] == "400"
    assert main(["datasets", "list"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("wikipedia "))
    assert "imported" in listed and "500 MB" not in listed


def test_info_synthetic_lists_presets_and_list_shows_descriptions(capsys):
    assert main(["datasets", "info", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "presets" in out and "synthetic-wikipedia    8,227 users, 1,000 items" in out
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "harness.data.synthetic:" not in out and "sized like JODIE Reddit" in out
