"""tools.build.mutants stays in step with the code: every planted bug still finds the exact text it
replaces (once) and names tests that exist. A refactor that moves the code makes this fail, instead of
the mutant silently reporting `stale` the next time someone runs the list."""
import os

import pytest

from tools.build import mutants


@pytest.mark.parametrize("name", sorted(mutants.MUTANTS))
def test_mutant_still_applies_to_its_file(name):
    path, old, new, tests = mutants.MUTANTS[name]
    with open(os.path.join(mutants.ROOT, path)) as f:
        text = f.read()
    assert text.count(old) == 1, "%s: the text to replace is in %s %d times" % (name, path, text.count(old))
    assert old != new
    for t in tests:
        test_file, _, test_name = t.partition("::")
        with open(os.path.join(mutants.ROOT, test_file)) as f:
            body = f.read()
        if test_name:
            assert "def %s(" % test_name.split("[")[0] in body, "%s: no test %s" % (name, t)
