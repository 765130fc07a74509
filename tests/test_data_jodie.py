"""The JODIE CSV loader: parsing against an independent reader, errors, ordering, the cache."""

from __future__ import annotations

import csv
import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.data import DataError, DataOrderWarning, FileDataset, load_jodie_csv, write_jodie_csv
from harness.data import cache as cache_module
from harness.data.synthetic import SyntheticDataset

HERE = Path(__file__).parent
WIKIPEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wikipedia.csv"


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HARNESS_DATA", str(home))
    return home


def reference_load(path: Path):
    """A plain-Python reader: csv module, first-appearance ids after a stable sort."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    rows = sorted(rows, key=lambda r: float(r[2]))  # sorted() is stable
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    out = []
    for r in rows:
        u = users.setdefault(r[0], len(users))
        i = items.setdefault(r[1], len(items))
        out.append((u, i, float(r[2]), int(float(r[3])), [float(x) for x in r[4:]]))
    return out, len(users), len(items)


def assert_matches_reference(stream, path):
    rows, n_users, n_items = reference_load(path)
    assert stream.n_users == n_users and stream.n_items == n_items
    assert stream.user.tolist() == [r[0] for r in rows]
    assert stream.item.tolist() == [r[1] for r in rows]
    assert stream.t.tolist() == [r[2] for r in rows]
    assert stream.label.tolist() == [r[3] for r in rows]
    expected = np.array([r[4] for r in rows], np.float32).reshape(len(rows), -1)
    np.testing.assert_array_equal(stream.features, expected)


def test_small_file_matches_reference_with_string_ids_and_sorting():
    path = HERE / "data" / "jodie-small.csv"
    with pytest.warns(DataOrderWarning, match="1 events were out of time order"):
        stream = load_jodie_csv(path)
    assert_matches_reference(stream, path)
    assert stream.user.dtype == np.int32 and stream.t.dtype == np.float64
    assert stream.label.dtype == np.int8 and stream.features.dtype == np.float32
    assert stream.features.shape == (5, 2)
    assert stream.user.tolist() == [0, 1, 2, 0, 1]  # carol (t=15) appears before alice's 2nd
    assert stream.counts()["state_changes"] == 1


def test_ties_keep_file_order_and_sorted_files_do_not_warn(tmp_path):
    path = tmp_path / "ties.csv"
    path.write_text("u,i,t,l\nb,x,5,0\na,y,5,0\nc,z,5,0\nb,y,6,0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream = load_jodie_csv(path)
    assert stream.user.tolist() == [0, 1, 2, 0]
    assert stream.item.tolist() == [0, 1, 2, 1]
    assert stream.n_features == 0


def test_crlf_and_trailing_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"u,i,t,l,f\r\n1,2,3,0,0.5\r\n4,5,6,1,1.5\r\n\r\n\n")
    stream = load_jodie_csv(path)
    assert stream.t.tolist() == [3.0, 6.0] and stream.features[:, 0].tolist() == [0.5, 1.5]


def test_parallel_parse_equals_serial(tmp_path, monkeypatch):
    stream = SyntheticDataset(n_users=50, n_items=30, n_events=3000, n_features=3).load()
    path = tmp_path / "syn.csv"
    write_jodie_csv(stream, path)
    monkeypatch.setattr("harness.data.jodie._PIECE_BYTES", 4096)  # many pieces
    serial = load_jodie_csv(path, workers=1)
    parallel = load_jodie_csv(path, workers=2)
    for column in ("user", "item", "t", "label", "features"):
        np.testing.assert_array_equal(getattr(serial, column), getattr(parallel, column))
    assert_matches_reference(serial, path)


def test_write_then_load_round_trips_the_synthetic_stream(tmp_path):
    stream = SyntheticDataset(n_users=40, n_items=25, n_events=2000, n_features=4).load()
    path = tmp_path / "rt.csv"
    write_jodie_csv(stream, path)
    back = load_jodie_csv(path)
    # Items that never occur are dropped by the file format; all occur here.
    assert back.n_users == stream.n_users
    for column in ("user", "item", "t", "label"):
        np.testing.assert_array_equal(getattr(back, column), getattr(stream, column))
    np.testing.assert_allclose(back.features, stream.features, atol=1e-6)


@pytest.mark.skipif(not WIKIPEDIA.is_file(), reason="shared wikipedia.csv not present")
def test_wikipedia_counts_and_cache(data_home):
    dataset = FileDataset(WIKIPEDIA)
    stream = dataset.load()
    assert stream.counts() == {"users": 8227, "items": 1000, "events": 157474,
                               "state_changes": 217, "features": 0}
    assert np.all(np.diff(stream.t) >= 0)
    cached = FileDataset(WIKIPEDIA).load()
    np.testing.assert_array_equal(cached.item, stream.item)
    assert any((data_home / "cache").iterdir())


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch, data_home):
    path = tmp_path / "c.csv"
    path.write_text("u,i,t,l,f\na,x,1,0,0.5\nb,y,2,1,0.25\n")
    first = FileDataset(path).load()
    calls = []
    monkeypatch.setattr("harness.data.datasets._parse", lambda *a: calls.append(a))
    monkeypatch.setattr(cache_module.hashlib, "sha256", None)  # checksum is remembered
    second = FileDataset(path).load()
    assert calls == []
    for column in ("user", "item", "t", "label", "features"):
        np.testing.assert_array_equal(getattr(first, column), getattr(second, column))
    assert second.n_users == 2 and second.n_items == 2


def test_changed_file_is_parsed_again(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("u,i,t,l\na,x,1,0\n")
    assert len(FileDataset(path).load()) == 1
    path.write_text("u,i,t,l\na,x,1,0\nb,x,2,0\n")
    assert len(FileDataset(path).load()) == 2


BAD = {
    "columns": ("u,i,t,l,f\na,x,1,0,0.5\nb,y,2,0\n", 3, "expected 5 columns"),
    "extra column": ("u,i,t,l\na,x,1,0\nb,y,2,0,9\n", 3, "expected 4 columns"),
    "timestamp": ("u,i,t,l\na,x,1,0\nb,y,yesterday,0\n", 3, "timestamp 'yesterday' is not a number"),
    "feature": ("u,i,t,l,f\na,x,1,0,0.5\nb,y,2,0,abc\n", 3, "feature f1 'abc' is not a number"),
    "nan": ("u,i,t,l,f\na,x,1,0,nan\n", 2, "feature f1 is nan"),
    "inf": ("u,i,t,l\na,x,inf,0\n", 2, "timestamp is inf"),
    "label": ("u,i,t,l\na,x,1,0\nb,y,2,2\n", 3, "state_label must be 0 or 1, got 2"),
    "empty": ("", None, "the file is empty"),
    "header only": ("user_id,item_id,timestamp,state_label\n", None, "no events"),
    "no header": ("a,x,1,0\nb,y,2,0\n", 1, "looks like an event"),
    "blank line": ("u,i,t,l\na,x,1,0\n\nb,y,2,0\n", 3, "the line is empty"),
    "empty id": ("u,i,t,l\n,x,1,0\n", 2, "user_id is empty"),
    "too few": ("u,i,t,l\na,x\n", 2, "expected at least 4 columns"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_files_give_one_line_errors_naming_file_and_line(case, tmp_path, data_home):
    text, line, message = BAD[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        FileDataset(path).load()
    error = str(info.value)
    assert "\n" not in error and message in error, error
    assert error.startswith(f"{path}:{line}:" if line else f"{path}:")
    leftovers = [p for p in data_home.rglob("*") if p.is_file()] if data_home.exists() else []
    assert leftovers == []


def test_malformed_file_in_a_parallel_parse_names_the_right_line(tmp_path, monkeypatch):
    lines = ["u,i,t,l,f"] + [f"u{k},i{k % 7},{k},0,0.5" for k in range(2000)]
    lines[1500] = "u,i,1499,0,oops"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("harness.data.jodie._PIECE_BYTES", 2048)
    with pytest.raises(DataError, match=rf"^{path}:1501: feature f1 'oops' is not a number"):
        load_jodie_csv(path, workers=2)


def test_cli_reports_bad_file_with_status_2_and_no_traceback(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("u,i,t,l\na,x,1,0\nb,y,2,7\n")
    assert main(["datasets", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"{path}:3: state_label must be 0 or 1" in err


def test_cli_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["datasets", "info", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such file" in err and str(missing) in err and "\n" not in err


@pytest.mark.parametrize("content, what", [
    (gzip.compress(b"user_id,item_id,timestamp,state_label\nu,i,1,0\n"), "gzip-compressed data"),
    (bytes(range(256)) * 4, "binary data"),
])
def test_a_binary_file_is_not_a_text_csv(tmp_path, content, what):
    from harness.data import load_jodie_csv

    path = tmp_path / "events.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"events.csv: not a text CSV \\(it holds {what}\\)"):
        load_jodie_csv(path)


def test_latin1_text_is_still_a_csv(tmp_path):
    from harness.data import load_jodie_csv

    path = tmp_path / "events.csv"
    rows = "".join(f"{u},i{k % 3},{k},0\n" for k, u in enumerate(["jos\xe9", "ren\xe9e"] * 5))
    path.write_bytes(("user_id,item_id,timestamp,state_label\n" + rows).encode("latin-1"))
    assert load_jodie_csv(path).n_users == 2
