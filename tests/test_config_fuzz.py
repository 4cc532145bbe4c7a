"""Fuzz the config loader: any document gives a Config or a ConfigError.

Fixed seed in CI (the "ci" profile, see conftest.py); the long form is
``python bench/fuzz_config.py``."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from config_fuzz import check_one, documents, near_valid, raw_texts, render


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(documents)
def test_structured_documents_give_config_or_config_error(tmp_path, document):
    check_one(tmp_path / "feedsup.toml", render(document))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw_texts)
def test_arbitrary_text_gives_config_or_config_error(tmp_path, text):
    check_one(tmp_path / "feedsup.toml", text)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(near_valid())
def test_near_valid_documents_load_only_within_bounds(tmp_path, document):
    check_one(tmp_path / "feedsup.toml", render(document))
