from __future__ import annotations

from edged.config import PublishConfig
from edged.frames.policy import PublishPolicy


def _run(policy: PublishPolicy, seq: list[tuple[str, float]], dt: float = 0.1) -> list[str | None]:
    return [policy.decide(lab, s, i * dt) for i, (lab, s) in enumerate(seq)]


def test_every_publishes_each_confident_result() -> None:
    p = PublishPolicy(PublishConfig(mode="every", min_score=0.5))
    out = _run(p, [("a", 0.9), ("a", 0.4), ("b", 0.6)])
    assert out == ["every", None, "every"]


def test_change_needs_n_of_m_agreement_and_ignores_flicker() -> None:
    p = PublishPolicy(PublishConfig(mode="change", agree_n=3, agree_m=5, heartbeat_s=0))
    seq = [("cat", 0.9)] * 3 + [("dog", 0.9), ("cat", 0.9), ("dog", 0.9), ("dog", 0.9)]
    out = _run(p, seq)
    # cat becomes stable on the 3rd result; one dog is flicker; dog wins 3 of 5 on the 7th.
    assert out == [None, None, "change", None, None, None, "change"]
    assert p.current == "dog"


def test_change_does_not_count_low_scores() -> None:
    p = PublishPolicy(PublishConfig(mode="change", agree_n=2, agree_m=3, min_score=0.5))
    assert _run(p, [("cat", 0.3), ("cat", 0.4), ("cat", 0.45)]) == [None, None, None]


def test_min_interval_rate_limits() -> None:
    p = PublishPolicy(PublishConfig(mode="every", min_interval_s=1.0))
    out = _run(p, [("a", 1.0)] * 25, dt=0.1)
    assert [i for i, r in enumerate(out) if r] == [0, 10, 20]


def test_heartbeat_republishes_the_current_label_after_silence() -> None:
    p = PublishPolicy(PublishConfig(mode="change", agree_n=1, agree_m=1, heartbeat_s=5))
    out = _run(p, [("a", 1.0)] * 12, dt=1.0)
    assert out[0] == "change"
    assert [i for i, r in enumerate(out) if r == "heartbeat"] == [5, 10]
