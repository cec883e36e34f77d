"""``etw-sensor spool``: status, dead letters, requeue."""
from __future__ import annotations

import json

from sensor.cli import main
from sensor.deliver.spool import Spool


def test_dead_letters_listed_and_requeued(tmp_path, capsys):
    path = tmp_path / "spool.sqlite"
    sp = Spool(path)
    sp.put_many([{"id": f"a{i}", "rule": {"title": "T"}, "PROCESSNAME": "C:\\x.exe"} for i in range(3)])
    rows = sp.fetch(10)
    sp.dead_letter([(rows[0].rowid, "mapping error", 400)])
    sp.close()
    assert main(["spool", "status", "--path", str(path)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["depth"] == 2 and st["dead_letter_depth"] == 1
    assert main(["spool", "dead", "--path", str(path)]) == 0
    [d] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert d["id"] == "a0" and d["status"] == 400 and d["reason"] == "mapping error" and d["rule"] == "T"
    assert main(["spool", "requeue", "--path", str(path)]) == 0
    assert "requeued 1 alert(s)" in capsys.readouterr().out
    sp = Spool(path)
    assert sp.depth() == 3 and sp.stats()["dead_letter_depth"] == 0
    sp.close()


def test_missing_spool(tmp_path, capsys):
    assert main(["spool", "status", "--path", str(tmp_path / "none.sqlite")]) == 1
    assert "no spool at" in capsys.readouterr().err
