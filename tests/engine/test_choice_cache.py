"""ChoiceCache: one probe per key, pinned results, latest decisions."""

from __future__ import annotations

from concatnets.engine.choice_cache import ChoiceCache


def test_probe_runs_once_per_key_and_pinned_keys_never_probe() -> None:
    cache: ChoiceCache[str, str] = ChoiceCache()
    calls: list[str] = []

    def probe(result: str) -> str:
        calls.append(result)
        return result

    assert cache.probed_or("a", lambda: probe("x")) == "x"
    assert cache.probed_or("a", lambda: probe("y")) == "x"
    cache.pin("b", "restored")
    assert cache.probed_or("b", lambda: probe("z")) == "restored"
    assert calls == ["x"]
    assert cache.probed() == {"a": "x", "b": "restored"}


def test_latest_decisions_and_clear() -> None:
    cache: ChoiceCache[str, str] = ChoiceCache()
    assert cache.record("a", "one") == "one"
    cache.record("a", "two")
    assert cache.decided() == {"a": "two"}
    cache.pin("b", "p")
    cache.clear()
    assert cache.decided() == {} and cache.probed() == {}
