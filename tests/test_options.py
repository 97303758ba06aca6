from __future__ import annotations

import pytest

from segmote_monai.options import as_bool


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), (1, True), (0, False), ("false", False),
                                            ("False", False), ("TRUE", True), ("no", False), ("on", True),
                                            ("0", False), (" yes ", True)])
def test_command_line_booleans(value, expected):
    assert as_bool(value, "resume") is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, [True]])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"resume must be true or false, got "):
        as_bool(value, "resume")
