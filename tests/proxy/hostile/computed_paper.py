"""Escapes 2/4: metadata computed at import (it put /etc/passwd into the record's paper)."""
from mqbench.proxy import proxy


@proxy(name="computed_paper", version=1, paper=open("/etc/passwd").readline(),  # noqa: SIM115
       kind="layer")
def computed_paper(stats):
    return [1.0] * len(stats.modules)
