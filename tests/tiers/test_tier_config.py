"""The [tiers], [lifecycle] and [cache] settings: parsing, one-line errors, round trips."""

from __future__ import annotations

import tomllib

import pytest

from chunkfs import config
from chunkfs.errors import ConfigError
from chunkfs.repo import Repository


def test_tier_settings_parse_and_round_trip():
    doc = {
        "tiers": {"warm": "s3://b/p", "cold": "/nfs/cold", "endpoint_url": "http://127.0.0.1:9000",
                  "addressing_style": "path", "cold_storage_class": "DEEP_ARCHIVE", "cold_archive": True},
        "lifecycle": {"run_idle": "2h", "cold_after_days": 90, "cold_idle_days": 0, "interval": "5m"},
        "cache": {"disk": "1GiB", "prefetch": "32MiB", "fetch_threads": 2},
    }  # fmt: skip
    s = config.parse(doc)
    assert (s.lifecycle.run_idle, s.lifecycle.interval) == (7200, 300)
    assert s.tiers.cold_archive is True and s.cache.disk == 1 << 30
    assert config.parse(tomllib.loads(config.render(s))) == s


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"tiers": {"cold_archive": "yes", "cold": "/c"}}, "tiers.cold_archive"),
        ({"tiers": {"cold_archive": True}}, "tiers.cold_archive"),
        ({"tiers": {"addressing_style": "sideways"}}, "tiers.addressing_style"),
        ({"lifecycle": {"run_idle": "soon"}}, "lifecycle.run_idle"),
        ({"lifecycle": {"cold_level": 30}}, "lifecycle.cold_level"),
        ({"cache": {"fetch_threads": 0}}, "cache.fetch_threads"),
    ],
)
def test_bad_tier_settings_are_one_line_errors(doc, key):
    with pytest.raises(ConfigError) as e:
        config.parse(doc)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_scheme_fails_at_open(tmp_path):
    settings = config.Settings(tiers=config.TierSettings(warm="ftp://host/x"))
    with pytest.raises(ConfigError, match="unsupported storage URL scheme"):
        Repository.create(tmp_path / "repo", settings=settings)
    assert not (tmp_path / "repo").exists()
