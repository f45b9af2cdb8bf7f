"""End-to-end tests: real processes, real servers (a package, so its conftest does not shadow tests/conftest.py)."""
