"""The demo campaign: a ci_hsc-shaped workflow whose jobs are real ``bash -c`` payloads.

Each payload logs JSON lines the way Rubin's pipetask does (``MDC``, ``levelName``, ...),
writes a small output file and exits; names reach the script as arguments, never spliced into
the script text.
"""

from __future__ import annotations

from panray.dag import ci_hsc
from panray.models import Job, Workflow

_SCRIPT = r"""
set -eu
name="$1"; label="$2"
log() { printf '{"name":"lsst.%s","levelName":"%s","levelNo":20,"message":"%s","MDC":{"LABEL":"%s","RUN":"demo"}}\n' "$label" "$1" "$2" "$label"; }
log INFO "start $name"
sleep 0.05
printf '%s\n' "$name" > "$PANRAY_WORK_DIR/$label.out"
log INFO "wrote $label.out"
echo "plain text line from $name"
"""


def demo_workflow(visits: int = 11, detectors: int = 3, patches: int = 1, home_site: str = "USDF") -> Workflow:
    """ci_hsc's shape (11 visits x 3 detectors, 2 bands) plus a final merge job at the home site."""
    shape = ci_hsc(visits=visits, detectors=detectors, patches=patches)
    jobs = [
        Job(name=n, label=label, parents=p, tags=t, request_memory=1024,
            command=["bash", "-c", _SCRIPT, "panray-demo", n, label])
        for n, label, p, t in zip(shape.names, shape.labels, shape.parents, shape.tags)
    ]
    final = Job(name="finalJob", label="finalJob", request_memory=1024,
                command=["bash", "-c", _SCRIPT, "panray-demo", "finalJob", "finalJob"])
    return Workflow(name="ci_hsc-demo", home_site=home_site, jobs=jobs, final_job=final)
