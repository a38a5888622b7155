"""The one range check every request's validate() uses: its message names the value and what to use instead."""

import pytest

from studio.errors import InvalidRequestError
from studio.validation import check_range


@pytest.mark.parametrize(
    "args, hint, message",
    [
        (("steps", 0, 1, 150), None, "steps=0 is out of range; use a value from 1 to 150."),
        (("cfg", 99.5, 0.0, 30.0), None, "cfg=99.5 is out of range; use a value from 0 to 30."),
        (("LoRA 'a' weight", 9.0, -4.0, 4.0), None, "LoRA 'a' weight 9.0 is out of range; use a value from -4 to 4."),
        (("seed", -5, 0, 2**32 - 1), None, "seed=-5 is out of range; use a value from 0 to 4294967295."),
        (("seed", -5, -1, 9), "-1 (random) or 0 to 9", "seed=-5 is out of range; use -1 (random) or 0 to 9."),
        (("strength", float("nan"), -2.0, 2.0), None, "strength=nan is out of range; use a value from -2 to 2."),
    ],
)
def test_out_of_range_values_are_named_with_what_to_use(args, hint, message):
    with pytest.raises(InvalidRequestError) as raised:
        check_range(*args, hint=hint)
    assert str(raised.value) == message


@pytest.mark.parametrize("value", [1, 150, 75.5])
def test_values_within_the_bounds_pass(value):
    check_range("steps", value, 1, 150)
