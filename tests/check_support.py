"""Helpers shared by the tests of the exercise checks and of the lesson (notebooks 02-06)."""
import textwrap
import types

import pytest

import faceage_helpers as fh

# The exercises whose answers are the module's functions, in fh.EXERCISES's order (notebook 07's exercises
# are the notebook's own functions, not the module's).
MODULE_EXERCISES = [name for name, (nb, _, _) in fh.EXERCISES.items() if nb < "07"]

# The lesson's loop as a student writes it in notebook 03 §4 (a cell's source): the right answer that the
# train_epoch check tests and the lesson tests save in a fake notebook 03.
RIGHT_LOOP = '''
def train_epoch(lesson, params, X, y, lr, batch_size, rng):
    n = len(X)
    order = rng.permutation(n)
    total = 0.0
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        y_hat, cache = lesson.forward(params, X[batch])
        loss, dy_hat = lesson.mse_loss(y_hat, y[batch])
        grads = lesson.backward(params, cache, dy_hat)
        lesson.sgd_step(params, grads, lr)
        total += loss * len(batch)
    return total / n
'''


def fails(check, fn, *phrases):
    """Run check(fn), expect an ExerciseCheckError, and return its message after checking the phrases."""
    with pytest.raises(fh.ExerciseCheckError) as info:
        check(fn)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in:\n{message}"
    return message


def twin(fn, module=None):
    """A copy of a function, as a student would define it: the same code, but not the object fh hands out,
    and defined in the notebook (__main__) unless module says otherwise."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__module__ = module or "__main__"
    return copy


def exec_source(source, module="__main__", **names):
    """Run source as a notebook cell would (np and fh defined, __name__ = module); returns the namespace."""
    namespace = {"np": fh.np, "fh": fh, "__name__": module, **names}
    exec(textwrap.dedent(source), namespace)
    return namespace
