"""``physforecast federated``: a directory per party with its scorecard, plus the profile."""

from __future__ import annotations

import json

import pytest

from physforecast.cli import main
from physforecast.federated import files


def _run(party_files, tmp_path, *extra):
    names = ",".join(str(p) for p in party_files)
    return main(
        [
            "federated",
            "--parties",
            names,
            "--target",
            str(party_files[2]),
            "--rounds",
            "1",
            "--local-steps",
            "2",
            "--finetune-steps",
            "2",
            "--hidden",
            "4",
            "--out",
            str(tmp_path),
            *extra,
        ]
    )


def test_cli_writes_a_scorecard_per_party_and_the_profile(party_files, tmp_path, capsys):
    assert _run(party_files, tmp_path, "--secure", "masking", "--in-process", "--json") == 0
    printed = capsys.readouterr().out
    rmse = json.loads(printed.strip().splitlines()[-1])
    assert set(rmse) == {"a", "b", "c"} and all(v > 0 for v in rmse.values())
    for name in ("a", "b", "c"):
        pdir = files.party_dir(tmp_path, name)
        card = json.loads((pdir / "scorecard.json").read_text())
        assert card
        summary = json.loads(files.party_summary_path(pdir).read_text())
        assert summary["test_rmse"] == pytest.approx(rmse[name])
        assert summary["finetune_steps"] == (2 if name == "c" else 0)
    run = json.loads(files.run_summary_path(tmp_path).read_text())
    assert run["roles"] == {"a": "source", "b": "source", "c": "target"}
    assert run["config"]["scheme"] == "masking"
    assert files.profile_markdown_path(tmp_path).exists()
    assert files.profile_plot_path(tmp_path).exists()


def test_cli_rejects_a_target_that_is_not_a_party(party_files, tmp_path, capsys):
    code = main(
        ["federated", "--parties", f"{party_files[0]},{party_files[1]}", "--target", "x.nc"]
    )
    assert code == 2
    assert "must be among the parties" in capsys.readouterr().err


def test_cli_rejects_an_unknown_scheme(party_files, tmp_path, capsys):
    assert _run(party_files, tmp_path, "--secure", "rot13", "--in-process") == 2
    assert "unknown secure aggregation scheme 'rot13'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_with_party_processes_and_ckks(party_files, tmp_path):
    assert _run(party_files, tmp_path, "--secure", "ckks") == 0
    prof = json.loads(files.profile_json_path(tmp_path).read_text())
    (r,) = prof["rounds"]
    assert abs(r["accounted_s"] - r["wall_s"]) <= 0.05 * r["wall_s"]
    for name in ("a", "b", "c"):
        assert (files.party_dir(tmp_path, name) / "scorecard.nc").exists()
        assert files.party_log_path(files.party_dir(tmp_path, name)).exists()
