"""The core measurements, registered through the same hook any plugin uses to add one."""

import skipbench
from skipbench.measurements import gradient_flow, identity, params, probes, throughput


@skipbench.hookimpl
def skipbench_register_measurements():
    for module in (gradient_flow, identity, params, throughput, probes):
        yield module.MEASUREMENT
