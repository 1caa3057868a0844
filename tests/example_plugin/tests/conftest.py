import sys
from pathlib import Path

# the package's source, for running these tests before it is installed; the harness's
# fixtures (harness_registry, tiny_model, tiny_data, run_suite) come with the harness itself
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
