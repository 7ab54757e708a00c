"""Storyboards expand to one prompt per frame; malformed ones fail naming the line or field."""

import json

import pytest

from nuwa_jax import storyboard as sb


def test_scenes_stretch_to_any_length():
    board = sb.parse_text("# the plot\n1 | fred wakes up\n\n3 | fred drives to work  # long\n")
    for n in (4, 16, 226, 3376):
        prompts = board.frame_prompts(n)
        assert len(prompts) == n
        assert prompts[0] == "fred wakes up" and prompts[-1] == "fred drives to work"
        assert prompts.count("fred wakes up") == round(n / 4)
    # Scene boundaries are monotone: a prompt never comes back.
    p = board.frame_prompts(16)
    assert p == ["fred wakes up"] * 4 + ["fred drives to work"] * 12


def test_frame_ranges_must_tile_the_video():
    board = sb.parse_text("0-9 | a\n10-15 | b\n")
    assert board.frame_prompts(16) == ["a"] * 10 + ["b"] * 6
    with pytest.raises(sb.StoryboardError, match="cover frames 0-15, but the video has 20"):
        board.frame_prompts(20)


def test_json_forms_equal_text_forms():
    scenes = {"scenes": [{"prompt": "a", "duration": 1}, {"prompt": "b", "duration": 3}]}
    ranges = {
        "captions": [{"start": 0, "end": 9, "prompt": "a"}, {"start": 10, "end": 15, "prompt": "b"}]
    }
    assert sb.parse_json(json.dumps(scenes)).frame_prompts(16) == sb.parse_text(
        "1|a\n3|b"
    ).frame_prompts(16)
    assert sb.parse_json(json.dumps(ranges)).frame_prompts(16) == ["a"] * 10 + ["b"] * 6


def test_from_frame_prompts_and_json_round_trip():
    prompts = ["a"] * 3 + ["b"] + ["a"] * 2
    board = sb.Storyboard.from_frame_prompts(prompts)
    assert [(s.start, s.end, s.prompt) for s in board.scenes] == [
        (0, 2, "a"),
        (3, 3, "b"),
        (4, 5, "a"),
    ]
    assert sb.parse_json(board.to_json()).frame_prompts(6) == prompts
    scenes = sb.parse_text("1|a\n3|b")
    assert sb.parse_json(scenes.to_json()).scenes == scenes.scenes
    with pytest.raises(sb.StoryboardError, match="no frames"):
        sb.Storyboard.from_frame_prompts([])


def test_single_prompt():
    assert sb.Storyboard.from_prompt(" x ").frame_prompts(3) == ["x"] * 3
    with pytest.raises(sb.StoryboardError, match="--prompt"):
        sb.Storyboard.from_prompt("  ")


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 | a\nno bar here\n", "line 2: expected 'DURATION | prompt'"),
        ("1 | a\n2 |   \n", "line 2: empty prompt"),
        ("1 | a\n-3 | b\n", "line 2: '-3' is neither"),
        ("0 | a\n", "line 1: '0' is neither"),
        ("0-4 | a\n6-9 | b\n", r"line 2: range starts at 6, expected 5 \(leaves a gap\)"),
        ("0-4 | a\n3-9 | b\n", r"line 2: range starts at 3, expected 5 \(overlaps"),
        ("1-4 | a\n", "line 1: range starts at 1, expected 0"),
        ("0-4 | a\n9-5 | b\n", "line 2: end 5 is before start 9"),
        ("0-4 | a\n3 | b\n", "line 2: mixes durations and frame ranges"),
        ("# only a comment\n\n", "no entries"),
    ],
)
def test_text_errors_name_the_line(text, match):
    with pytest.raises(sb.StoryboardError, match=match):
        sb.parse_text(text, "board.txt")


@pytest.mark.parametrize(
    "data, match",
    [
        ('{"scenes": [{"prompt": "a", "duration": 1}, {"duration": 2}]}', r"scenes\[1\].prompt"),
        ('{"scenes": [{"prompt": "a", "duration": -1}]}', r"scenes\[0\].duration: must be"),
        ('{"scenes": [{"prompt": "a"}]}', r"scenes\[0\].duration: missing"),
        ('{"captions": [{"prompt": "a", "start": 0}]}', r"captions\[0\].end: must be"),
        ('{"captions": [{"prompt": "a", "duration": 1}]}', r"captions\[0\]: use start/end"),
        ('{"scenes": [{"prompt": "a", "duration": 1, "colour": 2}]}', "unknown field"),
        ('{"scenes": 3}', "scenes: expected a list"),
        ('{"shots": []}', 'with "scenes" or "captions"'),
        ('{"scenes": [\n{"prompt": "a",\n}]}', "line 3: invalid JSON"),
    ],
)
def test_json_errors_name_the_field(data, match):
    with pytest.raises(sb.StoryboardError, match=match):
        sb.parse_json(data, "board.json")


def test_load_files(tmp_path):
    (tmp_path / "b.json").write_text('{"scenes": [{"prompt": "a", "duration": 2}]}')
    (tmp_path / "b.txt").write_text("2 | a\n")
    assert sb.load(str(tmp_path / "b.json")).frame_prompts(5) == ["a"] * 5
    assert sb.load(str(tmp_path / "b.txt")).frame_prompts(5) == ["a"] * 5
    with pytest.raises(sb.StoryboardError, match="nope.txt: no such storyboard file"):
        sb.load(str(tmp_path / "nope.txt"))


@pytest.mark.faults
def test_a_scene_that_gets_no_frame_is_an_error_naming_it():
    board = sb.parse_text("1 | a\n0.1 | b\n5 | c\n", "plot.txt")
    assert board.frame_prompts(61).count("b") == 1
    with pytest.raises(sb.StoryboardError, match=r"plot.txt: scene 2 of 3 \('b', duration 0.1 "
                       r"of 6.1\) gets 0 of the 30 frames.*at 61 frames or more"):  # fmt: skip
        board.frame_prompts(30)
