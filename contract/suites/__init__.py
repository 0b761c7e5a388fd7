"""The checks, one module per suite. Importing a module registers its checks (runner.check)."""

_LOADED = False


def load() -> None:
    global _LOADED
    if _LOADED:
        return
    # Registration order is the run order within a tier: the lifecycle spends first, so a small
    # budget goes to the most telling check.
    from . import auth, lifecycle, rules, spec, failures  # noqa: F401

    _LOADED = True
