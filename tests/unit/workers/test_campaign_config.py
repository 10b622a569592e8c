"""The campaign config file: the shipped one loads, every solver form parses, errors name fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from kap.platform.errors import ConfigError
from kap.workers.campaign import CampaignConfig, Endpoint, LocalModel

ROOT = Path(__file__).resolve().parents[3]


def test_the_shipped_config_loads() -> None:
    config = CampaignConfig.from_yaml(ROOT / "configs" / "campaigns" / "search-small.yaml")
    assert (config.domain, config.models.solver, config.turn_budget) == ("musique", "scripted", 60)


def test_solver_forms(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    base = "name: c\ndomain: d\ntasks: 3\nmodels:\n  solver: "
    path.write_text(base + "{base_url: 'http://127.0.0.1:8000/v1', model: m}\n")
    assert CampaignConfig.from_yaml(path).models.solver == Endpoint(
        base_url="http://127.0.0.1:8000/v1", model="m"
    )
    path.write_text(base + "{path: /models/tiny, device: cpu}\n")
    assert isinstance(CampaignConfig.from_yaml(path).models.solver, LocalModel)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: c\ndomain: d\ntasks: 0\n", "tasks"),
        ("name: c\ndomain: d\ntasks: 3\nhops: 7\n", "hops"),
        ("name: c\ndomain: d\ntasks: 3\nturn_budget: 301\n", "turn_budget"),
        ("name: c\ndomain: d\ntasks: 3\nsamples: 2\n", "samples"),
        ("name: c\ntasks: 3\n", "domain"),
        ("[not, a, mapping]\n", "config"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=where) as info:
        CampaignConfig.from_yaml(path)
    assert str(path) in str(info.value)
