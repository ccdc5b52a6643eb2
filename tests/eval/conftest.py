import pathlib
import sys

# eval/ is a top-level directory of the repository, not an installed package.
REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
