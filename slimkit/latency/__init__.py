"""Speed-up targets: workloads, per-layer latency profiles of this device, and the allocation planner.

- `noise`: how long a timing is repeated (until its median is known to a tolerance) and `TimingPolicy`;
- `workload`: what a speed-up is measured on, and side-by-side whole-model timing;
- `profile`: per-layer attention / MLP latency at candidate widths, measured once per device, shape and
  workload, cached as JSON;
- `target`: predicted speed-up of an allocation, the early reachability check, and the search for the
  allocation meeting a target with the least estimated quality loss.
"""

from slimkit.latency.noise import TimingPolicy
from slimkit.latency.workload import Workload, side_by_side

__all__ = ["TimingPolicy", "Workload", "side_by_side"]
