"""The cost profiler: the critical path adds up, the network model, the report."""

from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from physforecast.federated import files
from physforecast.federated.network import NETWORKS, NetworkModel, network
from physforecast.federated.profile import CATEGORIES, PartyTrace, RoundTrace, profile_round
from physforecast.federated.report import bottleneck_ranking, profile_figure, profile_markdown
from physforecast.federated.runner import run_federated


def _trace() -> RoundTrace:
    """Two parties; b is the straggler of phase A, a the last to acknowledge."""
    a = PartyTrace(
        trigger_sent_at=0.0,
        trigger_received_at=0.1,
        trigger_bytes=100,
        round_bytes=100,
        update_sent_at=1.6,
        update_received_at=1.7,
        update_bytes=10_000,
        plain_bytes=1000,
        up_timing={"compute": 1.0, "encrypt": 0.4, "serialise": 0.05},
        aggregate_sent_at=3.6,
        aggregate_received_at=3.7,
        aggregate_bytes=9000,
        ack_sent_at=4.4,
        ack_received_at=4.5,
        ack_bytes=50,
        down_timing={"serialise": 0.1, "decrypt": 0.3, "compute": 0.2},
    )
    b = PartyTrace(
        trigger_sent_at=0.2,
        trigger_received_at=0.3,
        trigger_bytes=100,
        round_bytes=100,
        update_sent_at=3.0,
        update_received_at=3.2,
        update_bytes=10_000,
        plain_bytes=1000,
        up_timing={"compute": 2.0, "encrypt": 0.5, "serialise": 0.1},
        aggregate_sent_at=3.5,
        aggregate_received_at=3.55,
        aggregate_bytes=9000,
        ack_sent_at=3.9,
        ack_received_at=4.0,
        ack_bytes=50,
        down_timing={"serialise": 0.1, "decrypt": 0.2, "compute": 0.05},
    )
    return RoundTrace(
        round=1,
        start=0.0,
        all_updates_at=3.2,
        aggregated_at=3.5,
        end=4.5,
        deserialise_s=0.05,
        aggregate_s=0.2,
        serialise_s=0.04,
        parties={"a": a, "b": b},
    )


def test_the_critical_path_follows_the_straggler_and_sums_to_the_wall_time():
    prof = profile_round(_trace(), {"wan": network("wan")})
    assert prof.wall_s == pytest.approx(4.5)
    assert sum(prof.critical.values()) == pytest.approx(4.5)
    c = prof.critical
    # phase A: b (fan-out 0.2, down 0.1, compute 2.0, encrypt 0.5, serialise 0.1, gap 0.1, up 0.2)
    # phase B: 0.05 + 0.2 + 0.04 (+ 0.01 gap); phase C: a (fan-out 0.1, down 0.1, ..., up 0.1)
    assert c["compute"] == pytest.approx(2.0 + 0.2)
    assert c["encrypt"] == pytest.approx(0.5)
    assert c["decrypt"] == pytest.approx(0.3)
    assert c["aggregate"] == pytest.approx(0.2)
    assert c["serialise"] == pytest.approx(0.1 + 0.05 + 0.04 + 0.1)
    assert c["ipc"] == pytest.approx(0.2 + 0.1 + 0.2 + 0.1 + 0.1 + 0.1)
    assert c["other"] == pytest.approx(0.1 + 0.01 + 0.1)
    assert prof.parties["a"].expansion == pytest.approx(10_050 / 1000)
    # WAN: measured IPC (0.8 s) replaced by four modelled phases
    net = network("wan")
    modelled = (
        net.phase([100, 100])
        + net.phase([10_000] * 2)
        + net.phase([9000] * 2)
        + net.phase([50] * 2)
    )
    assert prof.wan["wan"] == pytest.approx(4.5 - 0.8 + modelled)


def test_network_phase_is_latency_plus_the_slower_of_party_and_coordinator_links():
    net = NetworkModel("t", bandwidth_bps=8e6, rtt_s=0.1, coordinator_bandwidth_bps=16e6)
    # 1 MB each from 4 parties: party links take 1 s, the shared coordinator link 2 s
    assert net.phase([1_000_000] * 4) == pytest.approx(0.05 + 2.0)
    assert net.phase([1_000_000]) == pytest.approx(0.05 + 1.0)
    assert net.phase([]) == 0.0
    assert set(NETWORKS) == {"lan", "wan", "intercontinental"}
    with pytest.raises(ValueError, match="presets: lan"):
        network("moon")


def test_measured_categories_add_up_to_the_round_time(party_files, tiny_config, tmp_path):
    cfg = tiny_config(scheme="ckks", rounds=2)
    result = run_federated(party_files, party_files[2:], cfg, out=tmp_path, processes=False)
    prof = result.profile
    assert len(prof.rounds) == 2
    for r in prof.rounds:
        assert set(r.critical) == set(CATEGORIES)
        assert abs(r.accounted_s - r.wall_s) <= 0.05 * r.wall_s
        assert r.critical["compute"] > 0 and r.critical["encrypt"] > 0
        for p in r.parties.values():
            assert p.bytes_up > p.plain_bytes  # CKKS ciphertexts are larger than float32
            assert p.expansion > 2
        assert r.wan["intercontinental"] > r.wan["lan"]
    assert prof.setup["party_key_bytes"] > 1000 > prof.setup["coordinator_key_bytes"]
    saved = json.loads(files.profile_json_path(tmp_path).read_text())
    assert len(saved["rounds"]) == 2 and saved["model"]["n_shared"] < saved["model"]["n_params"]
    text = files.profile_markdown_path(tmp_path).read_text()
    assert "critical path" in text and "expansion" in text and "intercontinental" in text
    assert files.profile_plot_path(tmp_path).stat().st_size > 10_000
    for name in ("a", "b", "c"):
        card = json.loads((files.party_dir(tmp_path, name) / "scorecard.json").read_text())
        assert card
        summary = json.loads(files.party_summary_path(files.party_dir(tmp_path, name)).read_text())
        assert summary["role"] == ("target" if name == "c" else "source")
    ranking = bottleneck_ranking(prof)
    assert ranking[0][0] == "compute" and abs(sum(s for _, s in ranking) - 1) < 1e-6
    assert isinstance(profile_figure({"x": prof, "y": prof}), Figure)
    assert "| y |" in profile_markdown({"x": prof, "y": prof})
