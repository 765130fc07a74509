"""LastFM-1K and Reddit subreddit logs: parsing, format detection, sessions on them."""

from __future__ import annotations

import datetime as dt
import io
import tarfile

import numpy as np
import pytest

from harness.data import DataError, open_dataset, sessionize
from harness.data.logs import LASTFM_MEMBER, load_lastfm_1k, load_reddit_subreddits, parse_iso_utc

LASTFM = (
    "user_000001\t2009-05-04T23:08:57Z\tf1b1cf71-bd35-4e99-8624-24a6e15f133a\tDeep Dish\t\tA Song\n"
    "user_000001\t2009-05-04T13:54:10Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\t\tComposition 0919\n"
    "user_000001\t2009-05-04T13:52:04Z\ta7f7df4a-77d8-4f12-8acd-5c60c93f4de8\t坂本龍一\t\tMc2\n"
    "user_000002\t2009-05-04T13:42:52Z\t\tSome Artist\t\tTrack\n"
    "user_000002\t2008-02-29T00:00:00Z\t\tSome Artist\t\tOld\n"
)
REDDIT = (
    "username,subreddit,utc\nkabanossi,photoshopbattles,1482748751.0\n"
    "kabanossi,GetMotivated,1482748722.0\nbob,AskReddit,1482740000.0\n"
)


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "home"))


def test_iso_parser_matches_datetime():
    stamps = ["2009-05-04T23:08:57Z", "1970-01-01T00:00:00Z", "2000-02-29T12:00:01Z",
              "2013-12-31T23:59:59Z", "2009-05-04T23:08:57+02:00"]
    got = parse_iso_utc([s.encode() for s in stamps])
    expected = [dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps]
    assert got.tolist() == expected
    with pytest.raises(DataError, match=r"f.tsv:8: timestamp 'yesterday' is not an ISO 8601"):
        parse_iso_utc([b"2009-05-04T23:08:57Z", b"yesterday"], where="f.tsv", first_line=7)


def test_lastfm_tsv_and_tar_give_the_same_stream(tmp_path):
    tsv = tmp_path / LASTFM_MEMBER
    tsv.write_text(LASTFM, encoding="utf-8")
    archive = tmp_path / "lastfm-dataset-1K.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tsv, arcname="lastfm-dataset-1K/" + LASTFM_MEMBER)
        profile = b"#id\tgender\n"
        info = tarfile.TarInfo("lastfm-dataset-1K/userid-profile.tsv")
        info.size = len(profile)
        tar.addfile(info, io.BytesIO(profile))
    a, b = load_lastfm_1k(tsv), load_lastfm_1k(archive)
    for column in ("user", "item", "t"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert np.all(np.diff(a.t) >= 0)
    assert (a.n_users, a.n_items, len(a)) == (2, 3, 5)  # artist by id, or by name without id
    assert a.user.tolist() == [0, 0, 1, 1, 1]  # ids by first appearance in time: user_000002 first
    assert open_dataset(str(archive)).load().n_items == 3


def test_lastfm_malformed_lines_are_skipped_and_counted(tmp_path):
    tsv = tmp_path / "x.tsv"
    tsv.write_text(LASTFM + "user_000003\t2009-05-04T23:08:57Z\tonly three\n"
                   "user_000003\tyesterday\ta7f7df4a\tArtist\t\tTrack\n"
                   "\t2009-05-04T23:08:57Z\ta7f7df4a\tArtist\t\tTrack\n"
                   "user_000003\t2009-05-05T00:00:00Z\t\t\t\tNo artist\n"
                   "user_000004\t2009-05-06T00:00:00Z\tabc\tArtist\t\tA\ttab\tin the track\n")
    with pytest.warns(UserWarning, match=r"x.tsv: skipped 4 malformed lines of 10 \(first at "
                                         r"line 6: 3 tab-separated fields, at least 4 needed"):
        stream = load_lastfm_1k(tsv)
    assert len(stream) == 6 and stream.n_users == 3 and stream.n_items == 4
    assert stream.t[-1] == dt.datetime(2009, 5, 6, tzinfo=dt.UTC).timestamp()
    only_bad = tmp_path / "bad.tsv"
    only_bad.write_text("a\tb\n\n")
    with pytest.raises(DataError, match=r"bad.tsv: no line could be read \(2 malformed; line 1"):
        load_lastfm_1k(only_bad)


def test_lastfm_bom_and_crlf_on_every_line(tmp_path):
    plain, odd = tmp_path / "plain.tsv", tmp_path / "odd.tsv"
    plain.write_text(LASTFM, encoding="utf-8")
    lines = LASTFM.splitlines()
    # a BOM at the start and again mid-file (concatenated files); CRLF on some lines only
    odd.write_bytes(("\ufeff" + lines[0] + "\r\n" + lines[1] + "\n" + "\ufeff" + lines[2] + "\r\n"
                     + "\n".join(lines[3:]) + "\r\n").encode("utf-8"))
    a, b = load_lastfm_1k(plain), load_lastfm_1k(odd)
    for column in ("user", "item", "t"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert (b.n_users, b.n_items) == (2, 3)


def test_lastfm_empty_artist_id_maps_to_the_name(tmp_path):
    tsv = tmp_path / "x.tsv"
    tsv.write_text("u\t2009-05-04T00:00:00Z\t\tArtist A\t\tt\n"
                   "u\t2009-05-04T00:01:00Z\t\tArtist B\t\tt\n"
                   "u\t2009-05-04T00:02:00Z\t\tArtist A\t\tt\n")
    assert load_lastfm_1k(tsv).item.tolist() == [0, 1, 0]  # two artists, not one "no id" item


def test_reddit_csv_detected_and_sessionized_with_30_minutes(tmp_path):
    path = tmp_path / "reddit_data.csv"
    path.write_text(REDDIT)
    stream = load_reddit_subreddits(path)
    assert (stream.n_users, stream.n_items, len(stream)) == (2, 3, 3)
    assert stream.t.tolist() == [1482740000.0, 1482748722.0, 1482748751.0]
    dataset = open_dataset(str(path))
    assert dataset.format == "reddit-subreddits" and dataset.session_gap == 1800
    sessions = sessionize(dataset.load(), dataset.session_gap)
    assert sessions.visit.tolist() == [0, 1, 1]


def test_reddit_bad_timestamp(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(REDDIT + "carol,pics,soon\n")
    with pytest.raises(DataError, match=r"r.csv:5: utc 'soon' is not a number"):
        load_reddit_subreddits(path)
