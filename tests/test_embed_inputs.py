"""Caption-pair inputs and the pure caption transforms of the sensitivity analyses."""

from __future__ import annotations

import random

import pytest

from sdxl_probe.errors import DatasetError, ProbeError
from sdxl_probe.probes.embed.inputs import CaptionPair, parse_pair, read_csv, read_folder, read_lists
from sdxl_probe.probes.embed.sensitivity import join_tags, shuffled_orders, split_tags, tag_span


def test_parse_pair():
    assert parse_pair(" red circle ||| a red circle ") == CaptionPair("red circle", "a red circle", "--pair")
    with pytest.raises(ProbeError, match=r"\|\|\|"):
        parse_pair("only one side")
    with pytest.raises(ProbeError):
        parse_pair("a|||b|||c")


def test_read_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('tags,sentence,extra\n"red circle, white background",a red circle on white,x\nb,c,y\n')
    pairs = read_csv(path)
    assert [(p.tags, p.sentence) for p in pairs] == [
        ("red circle, white background", "a red circle on white"),
        ("b", "c"),
    ]
    assert pairs[0].source == "pairs.csv:2"


def test_read_csv_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("tag,sentence\na,b\n")
    with pytest.raises(
        DatasetError, match=r"bad.csv: missing column\(s\) tags; found columns \['tag', 'sentence'\]"
    ):
        read_csv(path)
    path.write_text("tags,sentence\na,\n")
    with pytest.raises(DatasetError, match="row 2 has an empty caption"):
        read_csv(path)
    with pytest.raises(DatasetError, match="not found"):
        read_csv(tmp_path / "missing.csv")


def test_read_lists(tmp_path):
    (tmp_path / "t.txt").write_text("a, b\nc, d\n")
    (tmp_path / "s.txt").write_text("an a and a b\n\na c and a d\n")
    assert [p.sentence for p in read_lists(tmp_path / "t.txt", tmp_path / "s.txt")] == [
        "an a and a b",
        "a c and a d",
    ]
    (tmp_path / "s.txt").write_text("one\n")
    with pytest.raises(DatasetError, match="has 2 captions but"):
        read_lists(tmp_path / "t.txt", tmp_path / "s.txt")


def test_read_folder_pairs_two_extensions(tmp_path):
    sub = tmp_path / "10_toy"
    sub.mkdir()
    (sub / "0001.tags.txt").write_text("red circle, white background\n")
    (sub / "0001.txt").write_text("a red circle on a white background\nsecond line ignored\n")
    (sub / "0002.tags.txt").write_text("blue star\n")  # no partner
    (sub / "0003.txt").write_text("lonely sentence\n")
    pairs, unpaired = read_folder(tmp_path, ".tags.txt", ".txt")
    assert [(p.tags, p.sentence) for p in pairs] == [
        ("red circle, white background", "a red circle on a white background")
    ]
    assert pairs[0].source == "10_toy/0001.tags.txt"
    assert unpaired == [sub / "0002.tags.txt"]
    with pytest.raises(DatasetError, match="no image has both"):
        read_folder(tmp_path, ".tags.txt", ".sentence.txt")
    with pytest.raises(DatasetError, match="two different"):
        read_folder(tmp_path, ".txt", ".txt")


def test_split_join_and_span():
    tags = split_tags(" red circle,blue square , , white background")
    assert tags == ["red circle", "blue square", "white background"]
    text = join_tags(tags)
    for i, tag in enumerate(tags):
        start, end = tag_span(tags, i)
        assert text[start:end] == tag


def test_shuffled_orders_differ_and_are_seeded():
    tags = ["a", "b", "c", "d"]
    orders = shuffled_orders(tags, 6, random.Random(3))
    assert len(orders) == 6
    assert all(sorted(o) == tags and o != tags for o in orders)
    assert orders == shuffled_orders(tags, 6, random.Random(3))
    assert orders != shuffled_orders(tags, 6, random.Random(4))
    assert shuffled_orders(["a"], 3, random.Random(0)) == []
    assert shuffled_orders(["a", "a"], 3, random.Random(0)) == []


def test_gather_pairs_from_each_source(tmp_path):
    from sdxl_probe.commands.embed_options import gather_pairs

    (tmp_path / "a.tags.txt").write_text("red circle, white background")
    (tmp_path / "a.sentence.txt").write_text("a red circle on a white background")
    (tmp_path / "b.tags.txt").write_text("blue star")
    notes = []
    pairs, label = gather_pairs(
        [], None, None, None, tmp_path, ".tags.txt", ".sentence.txt", log=notes.append
    )
    assert len(pairs) == 1 and label == str(tmp_path)
    assert notes and "1 '.tags.txt' files have no '.sentence.txt' partner" in notes[0]
    toy, label = gather_pairs([], None, None, None, None, ".tags.txt", ".txt", 3, seed=4)
    assert len(toy) == 3 and "toy-world" in label
    assert toy == gather_pairs([], None, None, None, None, ".tags.txt", ".txt", 3, seed=4)[0]
    with pytest.raises(ProbeError, match="found: none"):
        gather_pairs([], None, None, None, None, ".tags.txt", ".txt")
    with pytest.raises(ProbeError, match="needs --sentences-list"):
        gather_pairs([], None, tmp_path / "t.txt", None, None, ".tags.txt", ".txt")
