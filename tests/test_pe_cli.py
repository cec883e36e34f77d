"""``etw-sensor peinfo``: one JSON object per file, errors with their reason, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensor import cli
from sensor.enrich import pe

DATA = Path(__file__).resolve().parent / "data" / "pe"


def run(capsys, *argv):
    code = cli.main(["peinfo", *argv])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("impl", sorted(pe.READERS))
def test_peinfo_files(capsys, impl):
    code, rows = run(capsys, "--implementation", impl, str(DATA / "basic64.exe"),
                     str(DATA / "trunc_blob.exe"))
    assert code == 1
    assert rows[0] == {"path": str(DATA / "basic64.exe"), **pe.READERS[impl][0](DATA / "basic64.exe")}
    assert list(rows[0])[:2] == ["path", "OriginalFilename"]
    assert rows[0]["OriginalFilename"] == "basic.exe" and rows[0]["file_version"] == "1.2.3.4"
    assert rows[1] == {"path": str(DATA / "trunc_blob.exe"), "code": "past_eof",
                       "error": "the version resource runs past the end of the file"}


def test_peinfo_all_ok_exit_zero(capsys):
    code, rows = run(capsys, str(DATA / "basic32.exe"), str(DATA / "lang_enus.exe"))
    assert code == 0
    assert [r["OriginalFilename"] for r in rows] == ["basic.exe", "en.exe"]


def test_peinfo_folder(capsys, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.exe").write_bytes((DATA / "basic64.exe").read_bytes())
    (tmp_path / "notes.txt").write_text("ignored: not a PE extension")
    (tmp_path / "sub" / "b.DLL").write_bytes((DATA / "neutral_table.exe").read_bytes())
    code, rows = run(capsys, str(tmp_path))
    assert code == 0 and [Path(r["path"]).name for r in rows] == ["a.exe"]
    code, rows = run(capsys, "-r", str(tmp_path))
    assert [r["OriginalFilename"] for r in rows] == ["basic.exe", "neutral.exe"]


def test_peinfo_a_folder_without_pe_files_says_so_and_fails(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("not a PE extension")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.dll").write_bytes((DATA / "basic64.exe").read_bytes())
    code = cli.main(["peinfo", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert f"{tmp_path}: folder holds no PE files" in captured.err and "-r descends" in captured.err
    code, rows = run(capsys, "-r", str(tmp_path))   # the sub-folder's file is found with -r
    assert code == 0 and [r["OriginalFilename"] for r in rows] == ["basic.exe"]


def test_peinfo_missing_file(capsys, tmp_path):
    code, rows = run(capsys, str(tmp_path / "nope.exe"))
    assert code == 1 and rows[0]["code"] == "io" and "No such file" in rows[0]["error"]


def test_peinfo_usage(capsys):
    assert cli.main(["peinfo"]) == 2          # argparse's usage error, without a traceback
    assert "usage:" in capsys.readouterr().err
