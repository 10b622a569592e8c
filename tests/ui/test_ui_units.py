"""The explorer's pure parts, without services: the command line, the graph drawing, the filter
clause, config parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kap.ui import actions, graph_view
from kap.ui.cli import APP, command
from kap.ui.trajectory_data import Filters, _where, pages, read_chunk_ids

KAP = str(Path(sys.executable).parent / "kap")
REGION = {
    "nodes": [{"id": f"e{i}", "name": f"N{i}", "hop": min(i, 2), "degree": 1, "coverage": 0}
              for i in range(5)],
    "edges": [{"source": "e0", "target": f"e{i}", "predicate": "p", "evidence": 1}
              for i in range(1, 5)],
}  # fmt: skip


def test_kap_ui_serves_the_frame_headless_on_loopback_by_default() -> None:
    argv = command(APP, 8502, "127.0.0.1")
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP)] and APP.is_file()
    assert argv[argv.index("--server.port") + 1] == "8502"
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.headless") + 1] == "true"
    done = subprocess.run([KAP, "ui", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "--port" in done.stdout and "--address" in done.stdout


def test_the_layout_is_the_same_picture_for_the_same_region() -> None:
    first = graph_view.layout(REGION["nodes"], REGION["edges"])
    assert first == graph_view.layout(REGION["nodes"], REGION["edges"])
    assert set(first) == {f"e{i}" for i in range(5)}
    nodes, edges = graph_view.chart_data(REGION, "e0")
    assert [n["role"] for n in nodes][:2] == ["focus", "hop 1"] and len(edges) == 4
    spec = graph_view.chart(REGION, "e0").to_dict()
    assert "http" not in str(spec.get("data", "")) and graph_view.SELECTION in str(spec)


def test_a_click_selection_is_read_from_the_chart_state() -> None:
    assert graph_view.selected(SimpleNamespace(selection={"node": [{"id": "e3"}]})) == "e3"
    assert graph_view.selected(SimpleNamespace(selection={"node": []})) is None
    assert graph_view.selected(None) is None


def test_filters_become_fixed_clauses_with_bound_values() -> None:
    where, params = _where(Filters(domain="d", correct=False, min_turns=3, text="50%_off"))
    assert where == "true AND k.domain = :domain AND v.correct = :correct AND " \
                    "t.n_turns >= :min_turns AND k.question ILIKE :text"  # fmt: skip
    assert params["text"] == "%50\\%\\_off%" and params["correct"] is False
    assert pages(0) == 1 and pages(25) == 1 and pages(26) == 2 and pages(300) == 12
    step = {"checks": {"observations": [{"read_chunk_ids": ["a", "b"]},
                                        {"read_chunk_ids": ["b", "c"]}]}}  # fmt: skip
    assert read_chunk_ids(step) == ["a", "b", "c"]


def test_a_pasted_config_must_be_a_yaml_mapping() -> None:
    assert actions.parse_config("name: x\ndomain: d\ntasks: 2\n")["tasks"] == 2
    with pytest.raises(ValueError, match="mapping"):
        actions.parse_config("- a\n- b\n")
    with pytest.raises(ValueError, match="YAML"):
        actions.parse_config("name: [unclosed\n")
    assert actions.Outcome("t1", answered=False).message(5).startswith("No worker answered")
