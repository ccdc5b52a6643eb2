"""pytest fixtures for tests/deploy; the helpers live in deploy_helpers.py (a unique module name, so
they never collide with another test folder's conftest)."""

from deploy_helpers import helm  # noqa: F401  (session fixture)
