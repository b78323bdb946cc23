"""User errors share one base class, so every entry point's ``except UserError`` catches them all."""

import importlib
import inspect
import pkgutil

import adaptive_lm_ds
from adaptive_lm_ds.errors import UserError

# Errors that are not the user's to fix: a wrong call or a failing test harness shows its traceback.
NOT_USER_ERRORS = {"ParallelNotInitialized", "RankFailure", "RankTimeout"}


def _package_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(adaptive_lm_ds.__path__, "adaptive_lm_ds."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_class_of_the_package_is_a_user_error_or_named_as_not_one():
    errors = _package_exceptions()
    assert len(errors) > 10  # the walk found the package's error classes
    stray = sorted(path for path, cls in errors.items() if cls.__name__ not in NOT_USER_ERRORS | {"UserError"}
                   and not issubclass(cls, UserError))  # fmt: skip
    assert stray == []


def test_error_class_names_are_unique():
    names = [cls.__name__ for cls in _package_exceptions().values()]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
