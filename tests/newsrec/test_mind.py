"""Reading and writing MIND's news.tsv and behaviors.tsv: real lines, round trips, one-line errors."""
from __future__ import annotations

from datetime import datetime

import pytest

from flagstone.errors import DataError
from flagstone.newsrec.mind import (
    Impression,
    MindSplit,
    News,
    format_time,
    load_mind,
    read_behaviors,
    read_news,
    write_mind,
)

# lines in the exact shape of MINDsmall_train (tabs, entity JSON, 12-hour times without leading zeros)
NEWS_LINES = [
    "N55528\tlifestyle\tlifestyleroyals\tThe Brands Queen Elizabeth, Prince Charles, and Prince Philip Swear By\t"
    "Shop the notebooks, jackets, and more that the royals can't live without.\t"
    "https://assets.msn.com/labs/mind/AAGH0ET.html\t"
    '[{"Label": "Prince Philip, Duke of Edinburgh", "Type": "P", "WikidataId": "Q80976", "Confidence": 1.0, '
    '"OccurrenceOffsets": [48], "SurfaceForms": ["Prince Philip"]}]\t[]',
    "N19639\thealth\tweightloss\t50 Worst Habits For Belly Fat\tThese seemingly harmless habits are holding you "
    "back.\thttps://assets.msn.com/labs/mind/AAB19MK.html\t[]\t",
    "N61837\tnews\tnewsworld\tThe Cost of Trump's Aid Freeze in the Trenches of Ukraine's War\t\t"
    "https://assets.msn.com/labs/mind/AAJgNsz.html\t[]\t[]",
]
BEHAVIOR_LINES = [
    "1\tU13740\t11/11/2019 9:05:58 AM\tN55528 N19639\tN61837-0 N19639-1",
    "2\tU91836\t11/12/2019 6:11:30 PM\t\tN55528-1 N61837-0 N19639-0",
]


def write_folder(tmp_path, news_lines=NEWS_LINES, behavior_lines=BEHAVIOR_LINES):
    folder = tmp_path / "mind"
    folder.mkdir()
    (folder / "news.tsv").write_text("\n".join(news_lines) + "\n", encoding="utf-8")
    (folder / "behaviors.tsv").write_text("\n".join(behavior_lines) + "\n", encoding="utf-8")
    return folder


def test_reads_real_mind_lines(tmp_path):
    split = load_mind(write_folder(tmp_path))
    royals = split.news["N55528"]
    assert (royals.category, royals.subcategory) == ("lifestyle", "lifestyleroyals")
    assert royals.title.startswith("The Brands Queen Elizabeth") and '"WikidataId": "Q80976"' in royals.title_entities
    assert split.news["N19639"].abstract_entities == "[]"  # an empty field means no entities
    first, second = split.impressions
    assert first.time == datetime(2019, 11, 11, 9, 5, 58) and second.time == datetime(2019, 11, 12, 18, 11, 30)
    assert first.history == ("N55528", "N19639") and second.history == ()
    assert first.candidates == ("N61837", "N19639") and first.labels == (0, 1) and first.clicked == ("N19639",)
    assert split.labelled and "3 news, 2 impressions" in split.describe()


def test_round_trip_is_exact(tmp_path):
    folder = write_folder(tmp_path, news_lines=[line if not line.endswith("\t") else line + "[]"
                                                for line in NEWS_LINES])
    split = load_mind(folder)
    out = write_mind(split, tmp_path / "copy")
    assert (out / "news.tsv").read_text() == (folder / "news.tsv").read_text()
    assert (out / "behaviors.tsv").read_text() == (folder / "behaviors.tsv").read_text()
    again = load_mind(out)
    assert again.news == split.news and again.impressions == split.impressions


def test_written_objects_read_back(tmp_path):
    news = {"N1": News("N1", "sports", "soccer", "A title"), "N2": News("N2", "finance", "markets", "Another")}
    imps = [Impression("7", "U1", datetime(2019, 11, 15, 0, 30, 5), ("N1",), ("N2", "N1"), (1, 0)),
            Impression("8", "U2", datetime(2019, 11, 15, 12, 0, 0), (), ("N1",), None)]
    write_mind(MindSplit(news, imps), tmp_path / "m")
    assert (tmp_path / "m" / "behaviors.tsv").read_text().splitlines()[0] == "7\tU1\t11/15/2019 12:30:05 AM\tN1\tN2-1 N1-0"
    back = load_mind(tmp_path / "m")
    assert back.news == news and back.impressions == imps and not back.labelled
    assert format_time(datetime(2019, 11, 15, 12, 0, 0)) == "11/15/2019 12:00:00 PM"


@pytest.mark.parametrize("lines, message", [
    (["N1\tsports\tsoccer\ttitle only"], "news.tsv:1: expected 8 tab-separated fields"),
    (["N1\tsports\tsoccer\tT\t\t\t[]\t[]", "N1\tsports\tsoccer\tT\t\t\t[]\t[]"], "news.tsv:2: news id N1 appears twice"),
    (["N1\tsports\tsoccer\tT\t\t\t{bad\t[]"], "news.tsv:1: title entities is not JSON"),
    (["N1\tsports\tsoccer\tT\t\t\t{}\t[]"], "news.tsv:1: title entities must be a JSON list"),
    (["N1\tsports\tsoccer\t \t\t\t[]\t[]"], "news.tsv:1: news N1 has an empty title"),
])
def test_bad_news_lines_name_file_and_line(tmp_path, lines, message):
    path = tmp_path / "news.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as info:
        read_news(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("line, message", [
    ("1\tU1\t11/11/2019 9:05:58 AM\tN1", "behaviors.tsv:1: expected 5 tab-separated fields"),
    ("1\tU1\t2019-11-11 09:05\tN1\tN2-1", "behaviors.tsv:1: time '2019-11-11 09:05' is not in MIND's format"),
    ("1\tU1\t11/11/2019 9:05:58 AM\tN1\tN2-2", "behaviors.tsv:1: impression entry 'N2-2' must be"),
    ("1\tU1\t11/11/2019 9:05:58 AM\tN1\tN2-1 N1", "behaviors.tsv:1: some impression entries have a -0/-1 label"),
    ("1\tU1\t11/11/2019 9:05:58 AM\tN9\tN2-1", "behaviors.tsv:1: news id N9 is not in news.tsv"),
    ("1\tU1\t11/11/2019 9:05:58 AM\tN1\t ", "behaviors.tsv:1: the impression list is empty"),
])
def test_bad_behavior_lines_name_file_and_line(tmp_path, line, message):
    news = {"N1": News("N1", "a", "b", "t"), "N2": News("N2", "a", "b", "u")}
    path = tmp_path / "behaviors.tsv"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=message) as info:
        read_behaviors(path, news)
    assert "\n" not in str(info.value)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_bytes(b"N1\tsports\tsoccer\tT\t\t\t[]\t[]\nN2\tsports\tsoccer\t\xff\t\t\t[]\t[]\n")
    with pytest.raises(DataError, match="news.tsv:2: not UTF-8"):
        read_news(path)


def test_unlabelled_test_impressions_and_missing_files(tmp_path):
    path = tmp_path / "behaviors.tsv"
    path.write_text("1\tU1\t11/16/2019 9:05:58 AM\tN1\tN1 N2\n")
    (imp,) = read_behaviors(path)
    assert imp.labels is None and imp.candidates == ("N1", "N2") and imp.clicked == ()
    with pytest.raises(DataError, match="no news.tsv"):
        load_mind(tmp_path)
    with pytest.raises(DataError, match="holds a tab"):
        write_mind(MindSplit({"N1": News("N1", "a", "b", "bad\ttitle")}, [imp]), tmp_path / "out")
