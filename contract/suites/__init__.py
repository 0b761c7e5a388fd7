"""The checks, one module per suite. Importing a module registers its checks (runner.check)."""

_LOADED = False


def load() -> None:
    global _LOADED
    if _LOADED:
        return
    from . import auth, rules, spec, lifecycle, failures  # noqa: F401  (registration order = run order)

    _LOADED = True
