"""Helpers shared by the tests of the exercise checks (notebooks 02-06)."""
import types

import pytest

import faceage_helpers as fh


def fails(check, fn, *phrases):
    """Run check(fn), expect an ExerciseCheckError, and return its message after checking the phrases."""
    with pytest.raises(fh.ExerciseCheckError) as info:
        check(fn)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in:\n{message}"
    return message


def twin(fn, module=None):
    """A copy of one of the module's functions, as a student would define it: the same code, but not the
    object fh hands out, and defined in the notebook (__main__) unless module says otherwise."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)
    copy.__module__ = module or "__main__"
    return copy
