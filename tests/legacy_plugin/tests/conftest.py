import sys
from pathlib import Path

# the package's source, for running these tests before it is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the harness's fixtures for plugin authors: harness_registry, tiny_model, tiny_data, run_suite
from harness.testing import (_tiny_data_fixture, _tiny_model_fixture,  # noqa: E402,F401
                             harness_registry, run_suite)
