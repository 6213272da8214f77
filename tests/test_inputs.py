"""Input collection shared by the batch commands: files, folders, globs, mirrored paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from p3m.inputs import check_output_folder, collect_inputs, output_paths


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """photos/{a.jpg, b.PNG, notes.txt, .hidden.jpg, sub/c.webp, sub/deeper/d.tif, .cache/e.jpg}"""
    root = tmp_path / "photos"
    for name in ("a.jpg", "b.PNG", "notes.txt", ".hidden.jpg", "sub/c.webp", "sub/deeper/d.tif", ".cache/e.jpg"):
        touch(root / name)
    monkeypatch.chdir(tmp_path)
    return root


def relatives(pairs) -> list[str]:
    return [relative.as_posix() for _, relative in pairs]


def test_folder_is_recursive_sorted_and_skips_hidden_and_non_images(tree):
    pairs = collect_inputs(["photos"])
    assert relatives(pairs) == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tif"]
    assert all(source.is_absolute() for source, _ in pairs)
    assert [source for source, _ in pairs][2] == tree / "sub" / "c.webp"


def test_file_mirrors_as_bare_name_and_non_image_named_explicitly_is_kept(tree):
    pairs = collect_inputs(["photos/sub/deeper/d.tif", "photos/notes.txt"])
    assert relatives(pairs) == ["d.tif", "notes.txt"]
    assert pairs[1][0] == tree / "notes.txt"


def test_glob_is_relative_to_its_fixed_prefix(tree):
    assert relatives(collect_inputs(["photos/*.jpg"])) == ["a.jpg"]
    assert relatives(collect_inputs(["photos/**/*.tif"])) == ["sub/deeper/d.tif"]
    # a folder matched by a glob is searched like a folder given directly
    assert relatives(collect_inputs(["photos/s*"])) == ["sub/c.webp", "sub/deeper/d.tif"]
    # a glob does not pick up non-images or hidden files
    assert relatives(collect_inputs(["photos/*"])) == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tif"]


def test_absolute_glob(tree):
    pairs = collect_inputs([str(tree / "sub" / "*" / "*.tif")])
    assert relatives(pairs) == ["deeper/d.tif"]


def test_a_name_with_glob_characters_that_exists_is_a_file(tree):
    touch(tree / "shot[1].jpg")
    assert relatives(collect_inputs(["photos/shot[1].jpg"])) == ["shot[1].jpg"]


def test_order_is_kept_and_duplicates_listed_once(tree):
    pairs = collect_inputs(["photos/sub", "photos/a.jpg", "photos", "photos/a.jpg"])
    assert relatives(pairs) == ["c.webp", "deeper/d.tif", "a.jpg", "b.PNG"]


def test_missing_inputs_raise_clear_errors(tree):
    with pytest.raises(FileNotFoundError, match=r"^nope\.jpg: no such file or folder$"):
        collect_inputs(["photos/a.jpg", "nope.jpg"])
    with pytest.raises(FileNotFoundError, match="no files match"):
        collect_inputs(["photos/*.gif"])
    with pytest.raises(ValueError, match="matches no images"):
        collect_inputs(["photos/*.txt"])
    (tree / "empty").mkdir()
    touch(tree / "only_text" / "readme.md")
    with pytest.raises(ValueError, match="folder contains no images"):
        collect_inputs(["photos/empty"])
    with pytest.raises(ValueError, match="folder contains no images"):
        collect_inputs(["photos/only_text"])


def test_output_paths_mirror_and_change_suffix(tree, tmp_path):
    pairs = collect_inputs(["photos", "photos/notes.txt"])
    assert output_paths(pairs, "out") == [tmp_path / "out" / rel for rel in
                                          ("a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.tif", "notes.txt")]
    assert output_paths(pairs, "out", ".png")[0] == tmp_path / "out" / "a.png"


def test_output_paths_refuse_collisions(tree):
    touch(tree / "sub" / "a.jpg")
    with pytest.raises(ValueError, match="would both be written to"):
        output_paths(collect_inputs(["photos/a.jpg", "photos/sub/a.jpg"]), "out")
    touch(tree / "a.png")
    with pytest.raises(ValueError, match="would both be written to"):
        output_paths(collect_inputs(["photos/a.jpg", "photos/a.png"]), "out", ".png")


def test_output_paths_refuse_to_overwrite_an_input(tree):
    pairs = collect_inputs(["photos"])
    with pytest.raises(ValueError, match="would overwrite an input"):
        output_paths(pairs, "photos")
    os.symlink(tree, "alias")
    with pytest.raises(ValueError, match="would overwrite an input"):
        output_paths(pairs, "alias")
    # a new suffix next to the input is not an overwrite
    assert output_paths(collect_inputs(["photos/a.jpg"]), "photos", ".png") == [tree / "a.png"]


def test_check_output_folder(tree, tmp_path):
    check_output_folder("elsewhere", ["photos", "photos/a.jpg"])
    check_output_folder("photos-out", ["photos"])
    for inside in ("photos", "photos/out", "photos/sub/x"):
        with pytest.raises(ValueError, match="inside input folder photos"):
            check_output_folder(inside, ["photos/a.jpg", "photos"])


def test_folders_include_gif_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "anim.gif")
    assert [relative for _, relative in collect_inputs([str(tmp_path)])] == [Path("anim.gif")]
