"""Hypothesis profiles for the property-based tests (tests/test_fuzz.py).

- ``nyto-ci`` (when ``CI`` is set): derandomized, bounded, no example database;
  the default profile must stay well under 2 minutes on a 2-core machine.
- ``nyto-dev`` (default elsewhere): the same bounds, random seeds, the local
  example database in .pytest_cache/hypothesis (failures found once are replayed first).
- ``nyto-long`` (``NYTO_FUZZ=long``): many more and longer examples, for a
  fuzzing session: ``NYTO_FUZZ=long python -m pytest tests/test_fuzz.py``.

``HYPOTHESIS_PROFILE=<name>`` picks a profile explicitly.
"""

import os

try:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.database import DirectoryBasedExampleDatabase
except ImportError:  # hypothesis is optional: tests/test_fuzz.py skips without it
    settings = None

if settings is not None:
    _slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    _common = dict(deadline=None, suppress_health_check=_slow, print_blob=True)
    # CI: on a failure shrink only the first bug found, and skip the explain phase (time)
    settings.register_profile(
        "nyto-ci",
        max_examples=400,
        derandomize=True,
        database=None,
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        **_common,
    )
    # failures found locally are replayed first; kept under the git-ignored .pytest_cache/
    _db = DirectoryBasedExampleDatabase(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "hypothesis")
    )
    settings.register_profile("nyto-dev", max_examples=400, database=_db, **_common)
    settings.register_profile("nyto-long", max_examples=100_000, database=_db, **_common)
    if os.environ.get("HYPOTHESIS_PROFILE"):
        _profile = os.environ["HYPOTHESIS_PROFILE"]
    elif os.environ.get("NYTO_FUZZ", "").lower() == "long":
        _profile = "nyto-long"
    elif os.environ.get("CI"):
        _profile = "nyto-ci"
    else:
        _profile = "nyto-dev"
    settings.load_profile(_profile)
