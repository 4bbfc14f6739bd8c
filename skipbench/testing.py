"""The conformance checks of ``skipbench check``, for a plugin's own test suite.

``CHECKS`` is a list of checks, one per rule of the plugin contract, made to be parametrized::

    import pytest
    import skipbench.testing
    from my_plugin import MY_BUILDER   # a skipbench.BlockBuilder

    @pytest.mark.parametrize("check", skipbench.testing.CHECKS)
    def test_my_block_keeps_the_contract(check):
        check(MY_BUILDER)

Each check is called with a ``BlockBuilder`` (checked with its default parameters), a
``Variant`` (with ``registry=`` a registry holding its builder; by default the installed
plugins'), or a variant or builder name. It returns a ``Result`` when the rule holds and raises
``CheckFailed`` (an ``AssertionError``) with the reason when it does not. ``check.__name__`` is
the rule's name, so pytest's test ids read ``test_...[gradients]``.
"""

from __future__ import annotations

from .checks import CHECKS, Check, CheckFailed, Result, run_all

__all__ = ["CHECKS", "Check", "CheckFailed", "Result", "run_all"]
