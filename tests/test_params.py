"""The parameter model and the CLI's handling of config files and overrides."""

import json


def test_bad_settings_are_refused_with_the_field_named(capsys, tmp_path):
    from cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"teacher": {"stepz": 3}}))
    assert main(["run", "--batch", "x.jsonl", "--config", str(bad)]) == 1
    assert "teacher.stepz" in capsys.readouterr().err
    assert main(["run", "--batch", "x.jsonl", "--set", "teacher.steps=many"]) == 1
    assert "teacher.steps" in capsys.readouterr().err
    assert main(["run", "--batch", "x.jsonl", "--set", "nonsense"]) == 1
    assert "dotted.key=value" in capsys.readouterr().err
