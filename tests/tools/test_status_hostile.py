"""``edgectl status`` reads retained topics anyone under the prefix may have published: garbage
there costs that device's fields, never the table (the outsider attack got a RecursionError
from a deep model topic and an OverflowError from a huge fps, and NaN in ``--json``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tools.status import _plain, collect, table

GOOD = (
    "edged/cam-1/stats",
    json.dumps(
        {"fps": 2.5, "ts": "2026-12-03T10:00:00Z", "model": {"name": "m", "version": 1}}
    ).encode(),
)


def _payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.just(b"[" * 100_000),
        st.just(b'{"fps": 1' + b"0" * 400 + b"}"),
        st.just(b'{"fps": NaN, "model": {"name": "\\u001b[31mred", "version": 1e400}}'),
        st.just(b'{"active": {"name": "x", "version": Infinity}, "groups": [1, "g"]}'),
        st.just(b'{"fps": -Infinity, "ts": 5}'),
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["edged/evil/model", "edged/evil/stats", "edged/evil/availability",
                 "edged/\x1b[2Jx/stats", "edged/cam-1/model"]
            ),
            _payloads(),
        ),
        max_size=6,
    )
)  # fmt: skip
def test_garbage_costs_fields_never_the_table(msgs: list[tuple[str, bytes]]) -> None:
    rows = collect([GOOD, *msgs], "edged")
    text = table(rows)
    assert "\x1b" not in text  # no terminal escapes from device-made text
    strict = json.dumps(_plain(rows), allow_nan=False)  # --json is strict JSON
    assert json.loads(strict) is not None
    cam = next(r for r in rows if r["device"] == "cam-1")
    assert cam["fps"] == 2.5


def test_a_huge_or_non_finite_fps_is_no_number() -> None:
    rows = collect(
        [
            ("edged/a/stats", b'{"fps": 1' + b"0" * 400 + b"}"),
            ("edged/b/stats", b'{"fps": NaN}'),
            ("edged/c/stats", b'{"fps": 1e400}'),
            ("edged/d/stats", b'{"fps": 12}'),
        ],
        "edged",
    )
    assert [r["fps"] for r in rows] == [None, None, None, 12]
    assert table(rows).splitlines()[-1].split()[-2] == "12"  # the fps column
