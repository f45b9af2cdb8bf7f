"""The pure domain: meters, amounts, windows, budgets, decisions, ledger entries.

Nothing here reads a clock, a file or a database; time is always a parameter. Only the
standard library is imported.
"""
