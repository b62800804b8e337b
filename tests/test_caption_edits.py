"""Bulk caption edits (trainer/caption_edits.py, `lora-train captions`): each edit pinned on
text, the preview, the undo byte for byte, a change cut off halfway, the frequency table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import trainer.caption_edits as caption_edits
from synthetic import make_shapes_dataset
from trainer.caption_edits import CaptionEdit, apply_changes, plan
from trainer.caption_journal import CaptionEditError, undo
from trainer.cli import main as cli


@pytest.mark.parametrize("edit, before, after", [
    (CaptionEdit(find="red", replace_with="crimson"), "a red fox, red sky", "a crimson fox, crimson sky"),
    (CaptionEdit(find=r"(\w+) fox", replace_with=r"fox of \1", regex=True), "a red fox", "a fox of red"),
    (CaptionEdit(remove_tags=("lowres", "jpeg artifacts")), "cat, lowres, jpeg artifacts, sky", "cat, sky"),
    (CaptionEdit(add_tags=("sky", "my_style")), "cat, sky", "cat, sky, my_style"),
    (CaptionEdit(first="zz"), "cat, zz, sky", "zz, cat, sky"),
    (CaptionEdit(first="zz"), "cat,sky", "zz, cat, sky"),  # added where missing
    (CaptionEdit(find="cat", replace_with="dog", remove_tags=("dog",), add_tags=("pet",),
                 first="pet"), "cat, sky", "pet, sky"),  # find, remove, add, first: in order
    (CaptionEdit(add_tags=("b",), separator="|"), "a|c", "a| c| b"),
])
def test_each_edit(edit: CaptionEdit, before: str, after: str) -> None:
    assert edit.apply(before) == after


def test_a_bad_regular_expression_is_named() -> None:
    with pytest.raises(CaptionEditError, match=r"--find '\(' is not a regular expression"):
        CaptionEdit(find="(", regex=True)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    data = tmp_path / "shapes"
    make_shapes_dataset(data, 4)
    (data / "img01.txt").write_bytes(b"\xef\xbb\xbfa red square, white background")  # a BOM
    os.chmod(data / "img02.txt", 0o644)
    (data / "img03.txt").unlink()  # an image without a caption
    return data


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_change_then_undo_restores_every_byte(folder: Path) -> None:
    before = snapshot(folder)
    changes = plan(folder, CaptionEdit(find="white background", replace_with="", first="zz"))
    assert [c.path.name for c in changes] == ["img00.txt", "img01.txt", "img02.txt", "img03.txt"]
    assert changes[3].before is None and changes[3].after == "zz"  # the tags edit makes one
    assert snapshot(folder) == before  # a plan is only a preview
    apply_changes(folder, changes)
    assert (folder / "img01.txt").read_text() == "zz, a red square"
    assert (folder / "img03.txt").read_text() == "zz"
    assert oct((folder / "img02.txt").stat().st_mode & 0o777) == "0o644"
    restored = undo(folder)
    assert len(restored) == 4
    assert snapshot(folder) == before  # the BOM, the missing caption: all as they were
    with pytest.raises(CaptionEditError, match="nothing to undo"):
        undo(folder)


def test_a_change_cut_off_halfway_leaves_old_or_new_files_and_undoes(folder: Path,
                                                                      monkeypatch) -> None:
    before = snapshot(folder)
    changes = plan(folder, CaptionEdit(add_tags=("flat",)))
    real, written = caption_edits.atomic_write_text, []

    def dying(path, text):
        if len(written) == 3:  # the journal and two captions are written, then the power goes
            raise OSError(28, "No space left on device")
        written.append(path)
        return real(path, text)

    monkeypatch.setattr(caption_edits, "atomic_write_text", dying)
    with pytest.raises(OSError):
        apply_changes(folder, changes)
    monkeypatch.setattr(caption_edits, "atomic_write_text", real)
    now = snapshot(folder)
    for change in changes:
        text = (folder / change.path.name).read_text() if (folder / change.path.name).exists() \
            else None
        assert text in (change.before_text if change.before is not None else None, change.after)
    assert now != before
    undo(folder)
    assert snapshot(folder) == before


def test_the_command_line_previews_edits_counts_and_undoes(folder: Path, capsys) -> None:
    before = snapshot(folder)
    assert cli(["captions", str(folder), "--add-tag", "flat", "--dry-run"]) == 0
    assert "4 caption(s) would change (dry run" in capsys.readouterr().out
    assert snapshot(folder) == before
    assert cli(["captions", str(folder), "--remove-tag", "white background", "--first", "zz"]) == 0
    assert "changed 4 caption(s); undo with" in capsys.readouterr().out
    assert cli(["captions", str(folder), "--frequency", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    captions = [(folder / f"img0{i}.txt").read_text() for i in range(4)]
    by_hand: dict[str, int] = {}
    for text in captions:
        for tag in dict.fromkeys(t.strip() for t in text.split(",")):
            by_hand[tag] = by_hand.get(tag, 0) + 1
    assert table == {"shapes": by_hand} and by_hand["zz"] == 4
    assert cli(["captions", str(folder), "--undo"]) == 0
    assert snapshot(folder) == before
    assert cli(["captions", str(folder), "--undo"]) == 2  # nothing left to undo
    assert cli(["captions", str(folder / "img00.png")]) == 2  # a file, not a folder


def test_the_json_preview_lists_every_change_for_the_window(folder: Path, capsys) -> None:
    before = snapshot(folder)
    assert cli(["captions", str(folder), "--find", "white", "--replace", "grey", "--dry-run",
                "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert snapshot(folder) == before and preview["dry_run"] and preview["changed"] == 3
    assert {Path(c["caption_file"]).name: c["after"] for c in preview["changes"]} == {
        name: (folder / name).read_text(encoding="utf-8-sig").replace("white", "grey")
        for name in ("img00.txt", "img01.txt", "img02.txt")}
    assert cli(["captions", str(folder), "--find", "white", "--replace", "grey", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == preview["changes"]
    assert "grey background" in (folder / "img00.txt").read_text()


def test_undo_from_another_current_folder_restores_the_same_files(folder: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    before = snapshot(folder)
    monkeypatch.chdir(folder.parent)
    assert cli(["captions", folder.name, "--add-tag", "flat"]) == 0  # a relative folder
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / folder.name).mkdir(parents=True)
    (elsewhere / folder.name / "img00.txt").write_text("someone else's file")
    monkeypatch.chdir(elsewhere)
    assert cli(["captions", str(folder), "--undo"]) == 0
    assert snapshot(folder) == before
    assert (elsewhere / folder.name / "img00.txt").read_text() == "someone else's file"


def test_a_journal_naming_files_elsewhere_restores_nothing(folder: Path, tmp_path: Path) -> None:
    apply_changes(folder, plan(folder, CaptionEdit(add_tags=("flat",))))
    journal = folder / ".lora-studio-caption-undo.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    journal.write_text(journal.read_text() + json.dumps({"path": str(victim), "before": None})
                       + "\n")
    changed = snapshot(folder)
    with pytest.raises(CaptionEditError, match="names files outside .*nothing was restored"):
        undo(folder)
    assert victim.read_text() == "keep me" and snapshot(folder) == changed
