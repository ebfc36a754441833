"""broker.core.fastjson gives exactly the stdlib's text (compact: pydantic's layout; dumps: json.dumps')."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core import fastjson

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
trees = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
                     max_leaves=20)


@given(trees)
def test_same_text_as_the_stdlib(tree):
    assert fastjson.compact(tree) == json.dumps(tree, ensure_ascii=False, separators=(",", ":"))
    assert fastjson.dumps(tree) == json.dumps(tree)


def test_unserializable_is_a_type_error():
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.compact({"x": object()})
