"""The RFC 8405 back-off (forwarder/backoff.py) and its routing configuration."""
from __future__ import annotations

import pytest

from forwarder import config
from forwarder.routing.backoff import LONG_WAIT, QUIET, SHORT_WAIT, Backoff


def test_first_event_after_quiet_gets_the_initial_delay():
    b = Backoff(initial=0.0, short=0.05, long=1.0, time_to_learn=0.5, holddown=3.0)
    assert b.state(100.0) == QUIET
    assert b.event(100.0) == 0.0
    assert b.state(100.1) == SHORT_WAIT


def test_a_storm_moves_from_short_to_long_after_time_to_learn():
    b = Backoff(initial=0.0, short=0.05, long=1.0, time_to_learn=0.5, holddown=3.0)
    b.event(10.0)
    assert b.event(10.2) == 0.05
    assert b.event(10.49) == 0.05
    assert b.event(10.5) == 1.0          # learned: this is a storm
    assert b.state(12.0) == LONG_WAIT
    assert b.event(13.4) == 1.0          # each event restarts the hold-down
    assert b.state(16.39) == LONG_WAIT
    assert b.state(16.4) == QUIET        # 3 s without events
    assert b.event(16.4) == 0.0


def test_isolated_events_each_get_the_initial_delay():
    b = Backoff(initial=0.01, short=0.05, long=1.0, time_to_learn=0.5, holddown=3.0)
    assert [b.event(t) for t in (0.0, 3.0, 6.5, 100.0)] == [0.01] * 4


@pytest.mark.parametrize("args", [(0.1, 0.05, 1.0, 0.5, 3.0), (0.0, 2.0, 1.0, 0.5, 3.0),
                                  (0.0, 0.05, 1.0, -1.0, 3.0), (0.0, 0.05, 1.0, 0.5, 0.0)])
def test_inconsistent_delays_are_refused(args):
    with pytest.raises(ValueError):
        Backoff(*args)


def test_routing_config_takes_backoffs_in_ms(tmp_path):
    cfg = config.parse({"node": "/node/a", "faces": [],
                        "routing": {"hello_ms": 1000, "dead_ms": 5000,
                                    "spf_backoff_ms": [0, 100, 2000, 500, 5000]}}, tmp_path)
    assert cfg.routing.spf_backoff_ms == (0, 100, 2000, 500, 5000)
    assert cfg.routing.lsa_backoff_ms is None
    assert Backoff.from_ms(cfg.routing.spf_backoff_ms).long == 2.0


@pytest.mark.parametrize("value, words", [
    ([0, 100, 2000], "five integers"),
    ([0, 100, 2000, 500, "x"], "five integers"),
    ([0, 3000, 2000, 500, 5000], "initial <= short <= long"),
])
def test_bad_backoff_config_names_the_key(tmp_path, value, words):
    with pytest.raises(config.ConfigError) as exc:
        config.parse({"node": "/node/a", "faces": [], "routing": {"lsa_backoff_ms": value}},
                     tmp_path)
    assert "routing.lsa_backoff_ms" in str(exc.value) and words in str(exc.value)
