"""Test tiers that need something this machine may lack (MicroPython, network namespaces).

One rule for all of them: without the thing, skip with the reason; but where an environment variable
makes the tier mandatory (the Makefile and .ci/run set them), fail instead, so CI never skips silently."""
import os

import pytest


def skip_or_fail(env_var, what, why):
    if os.environ.get(env_var):
        pytest.fail("%s is set, so this tier must run, but %s unavailable: %s" % (env_var, what, why), pytrace=False)
    pytest.skip("%s unavailable: %s" % (what, why))
