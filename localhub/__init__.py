"""A local, Hub-compatible server for tests and the offline demo (the real Hub is unreachable here).

`create_app(root, token=..., lfs_threshold=..., faults=...)` builds the FastAPI app, `seed(...)` fills a repo
from a folder without HTTP, `Faults` injects failures at runtime. Run it with `python -m localhub`.
"""

from localhub.faults import Faults
from localhub.seed import seed
from localhub.server import HubState, create_app

__all__ = ["Faults", "HubState", "create_app", "seed"]
