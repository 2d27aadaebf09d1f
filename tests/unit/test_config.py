"""chunkfs.toml: sizes, bounds, unknown keys and sections, and render → parse round trips."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs import config
from chunkfs.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [
        (4194304, 4194304),
        (0, 0),
        ("4194304", 4194304),
        ("4MiB", 4 << 20),
        ("4M", 4 << 20),
        ("4 MiB", 4 << 20),
        ("4mb", 4 << 20),
        ("64KiB", 64 << 10),
        ("64k", 64 << 10),
        ("2GiB", 2 << 30),
        ("1T", 1 << 40),
        ("100B", 100),
        (" 7 ", 7),
    ],
)
def test_parse_size_accepts_integers_and_binary_units(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("bad", [-1, "-4MiB", "4.5MiB", "4XB", "MiB", "", "4 M i B", True, 4.0, None, [4]])
def test_parse_size_rejects_everything_else(bad):
    with pytest.raises(ValueError):
        config.parse_size(bad)


@pytest.mark.parametrize(
    "n, text", [(4 << 20, "4MiB"), (64 << 10, "64KiB"), (3 << 30, "3GiB"), (1000, "1000"), (0, "0")]
)
def test_format_size(n, text):
    assert config.format_size(n) == text
    assert config.parse_size(text) == n


def test_defaults():
    s = config.parse({})
    assert s == config.Settings()
    assert (s.chunking.chunk_size, s.chunking.min_chunk) == (4 << 20, 64 << 10)
    assert s.compression.max_ratio == 0.75 and s.tiers.hot == "hot"


def test_a_partial_file_keeps_the_other_defaults():
    s = config.parse(tomllib.loads('[chunking]\nchunk_size = "1MiB"\n[packs]\nmax_open = 3\n'))
    assert s.chunking.chunk_size == 1 << 20
    assert s.chunking.min_chunk == config.ChunkingSettings().min_chunk
    assert s.packs.max_open == 3 and s.packs.target_size == config.PackSettings().target_size


@pytest.mark.parametrize(
    "doc, names",
    [
        ({"chunking": {"chunk_size": "1KiB"}}, "chunking.chunk_size"),  # below 64 KiB
        ({"chunking": {"chunk_size": "65MiB"}}, "chunking.chunk_size"),  # above 64 MiB
        ({"chunking": {"chunk_size": "lots"}}, "chunking.chunk_size"),
        ({"chunking": {"min_chunk": 0}}, "chunking.min_chunk"),
        ({"chunking": {"chunk_size": "64KiB", "min_chunk": "128KiB"}}, "chunking.min_chunk"),
        ({"compression": {"level": 23}}, "compression.level"),
        ({"compression": {"level": "3"}}, "compression.level"),
        ({"compression": {"level": True}}, "compression.level"),
        ({"compression": {"max_ratio": 1.5}}, "compression.max_ratio"),
        ({"compression": {"max_ratio": "0.5"}}, "compression.max_ratio"),
        ({"compression": {"sample": "1KiB"}}, "compression.sample"),
        ({"packs": {"target_size": "512KiB"}}, "packs.target_size"),
        ({"packs": {"max_open": 0}}, "packs.max_open"),
        ({"tiers": {"hot": ""}}, "tiers.hot"),
        ({"tiers": {"hot": 5}}, "tiers.hot"),
        ({"cache": {"memory": "65GiB"}}, "cache.memory"),
        ({"registry": {"levels": "a/b/c/d/e/f/g"}}, "registry.levels"),  # a key holds at most 6
    ],
)
def test_bad_values_name_the_key_on_one_line(doc, names):
    with pytest.raises(ConfigError) as e:
        config.parse(doc, "REPO/chunkfs.toml")
    message = str(e.value)
    assert message.startswith("REPO/chunkfs.toml: ") and names in message
    assert "\n" not in message


def test_unknown_key_is_named_with_the_known_ones():
    known = r"unknown key chunking\.chunksize \(known: chunk_size, min_chunk\)"
    with pytest.raises(ConfigError, match=known):
        config.parse({"chunking": {"chunksize": 1 << 20}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"unknown section \[chunker\]"):
        config.parse({"chunker": {"chunk_size": 1 << 20}})


def test_a_section_that_is_not_a_table():
    with pytest.raises(ConfigError, match=r"chunking must be a table"):
        config.parse({"chunking": 5})


def test_load_reports_bad_toml_and_a_missing_file_in_one_line(tmp_path):
    bad = tmp_path / "chunkfs.toml"
    bad.write_text("[chunking\nchunk_size = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        config.load(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")


def _all_fields(s: config.Settings):
    return {(sec.name, f.name): getattr(getattr(s, sec.name), f.name)
            for sec in dataclasses.fields(s) for f in dataclasses.fields(getattr(s, sec.name))}  # fmt: skip


def test_render_documents_every_key_and_parses_back_to_the_defaults():
    text = config.render(config.Settings())
    for section, key in _all_fields(config.Settings()):
        assert f"[{section}]" in text and f"\n{key} = " in text
    assert config.parse(tomllib.loads(text)) == config.Settings()


sizes = st.integers(64 << 10, 64 << 20)
settings_strategy = st.builds(
    lambda cs, mc, level, sample, ratio, target, max_open, hot, memory: config.Settings(
        chunking=config.ChunkingSettings(cs, min(mc, cs)),
        compression=config.CompressionSettings(level, sample, ratio),
        packs=config.PackSettings(target, max_open),
        tiers=config.TierSettings(hot),
        cache=config.CacheSettings(memory),
    ),
    sizes,
    st.integers(1, 64 << 20) | st.sampled_from([1 << 10, 64 << 10, 1 << 20]),
    st.integers(-7, 22),
    st.integers(4 << 10, 64 << 20) | st.sampled_from([4 << 10, 1 << 20]),
    st.floats(0, 1, allow_nan=False),
    st.integers(1 << 20, 4 << 30) | st.sampled_from([1 << 20, 1 << 30, 4 << 30]),
    st.integers(1, 1024) | st.sampled_from([1, 1024, 512]),  # 1024 must not render as a size ("1KiB")
    st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    st.integers(0, 64 << 30) | st.sampled_from([0, 1 << 30]),
)


@settings(deadline=None)
@given(settings_strategy)
def test_render_then_parse_round_trips(s):
    assert config.parse(tomllib.loads(config.render(s))) == s


def test_repository_path_with_quotes_and_backslashes_round_trips():
    s = config.Settings(tiers=config.TierSettings(hot='/mnt/nvme "fast"\\tier'))
    assert config.parse(tomllib.loads(config.render(s))).tiers.hot == '/mnt/nvme "fast"\\tier'
