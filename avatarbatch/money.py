"""Money as people see it: one number of decimals and one way to print a cost.

It lives at the bottom so that every layer that shows money (the state's job histories, the
plan, the reports, the CLI) shows it alike.
"""

from __future__ import annotations

from decimal import Decimal

#: decimals of every money figure shown to people: per-second prices ($0.044 x 12.345 s) need 5
MONEY_PLACES = 5


def money(value: Decimal | float | None, *, unknown: str = "?") -> str:
    """A cost as printed everywhere (plan, status, run summary, progress, reports, a job's
    history): `$1,234.56789`.

    `unknown` stands in for a cost nobody knows (remote audio of unmeasured length).
    """
    if value is None:
        return unknown
    return f"${Decimal(str(value)):,.{MONEY_PLACES}f}"
