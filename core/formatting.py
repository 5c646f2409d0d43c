"""How figures read on the operator's pages: one place, so that the pages and their tests agree to the digit."""
from decimal import Decimal


def count(value: int | None) -> str:
    """12,345,678"""
    return f"{int(value or 0):,}"


def money(value: Decimal | float | None) -> str:
    """1,234.5678: four decimals, since a single call often costs a fraction of a cent."""
    return f"{Decimal(value or 0):,.4f}"


def percent(rate: float | None) -> str:
    """2.5 %, or an en dash when there is nothing to divide by."""
    return "–" if rate is None else f"{rate * 100:.1f} %"


def short(value: float) -> str:
    """A compact number for chart axes: 950, 12k, 3.4M, 1.2B."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            scaled = value / limit
            return f"{scaled:.{0 if scaled == int(scaled) else 1}f}{suffix}"
    return f"{value:.{0 if value == int(value) else 2}f}"


def short_money(value: float) -> str:
    """A money amount for chart axes: 12k, 3.50, 0.25, 0.0025."""
    if abs(value) >= 1000:
        return short(value)
    return f"{value:,.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.4f}"
