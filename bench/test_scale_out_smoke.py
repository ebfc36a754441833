"""Smoke tests for bench/scale_out.py --broker rabbitmq-cluster.

Not run in CI: CI collects `tests/` only (pyproject's testpaths) and the cluster run takes 75-140 s here (a 2-node
RabbitMQ cluster start ~15 s, then 6 configurations of 2.5 s each plus their start-up), over the 60 s a CI smoke
may take. Run explicitly: .venv/bin/python -m pytest bench/test_scale_out_smoke.py -p no:cacheprovider
(the translation test takes well under a second; the cluster run is marked slow and needs rabbitmq-server,
postgresql and the `scale` extra).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.scale.broker_acl import broker_users, rabbitmq_regex, write_files
from tests.postgres_helpers import needs_postgres
from tests.rabbitmq_helpers import definitions, needs_rabbitmq, recorded_commands
from tests.support.process import ROOT


def test_the_definitions_carry_the_generated_rabbitmq_script(tmp_path: Path) -> None:
    """import_site's shortcut: every user, password, permission and the session policy of the site's generated
    `rabbitmq.sh` is in the definitions file it imports."""
    residents = [{"resident_id": "r0", "household_number": "h0"}, {"resident_id": "r1", "household_number": "h1"}]
    users = broker_users(residents, [{"device_id": "d0", "household_number": "h0"}], "A")
    write_files(users, tmp_path, mosquitto=False, rabbitmq=True, site_id="A")
    defs = definitions(recorded_commands(tmp_path / "rabbitmq.sh", dict(os.environ)))
    assert sorted(u["name"] for u in defs["users"]) == sorted(u.name for u in users)
    for d in defs["users"]:
        raw = base64.b64decode(d["password_hash"])
        password = next(u.password for u in users if u.name == d["name"])
        assert raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest(), d["name"]
    topics = {t["user"]: (t["write"], t["read"]) for t in defs["topic_permissions"]}
    assert topics == {u.name: (rabbitmq_regex(u.publish), rabbitmq_regex(u.subscribe)) for u in users}
    assert topics["resident-r0@A"] != topics["resident-r1@A"]
    assert len(defs["permissions"]) == len(users)
    [policy] = defs["policies"]
    assert policy["apply-to"] == "queues"
    assert policy["definition"]["ha-mode"] == "all"
    assert re.fullmatch(policy["pattern"], "mqtt-subscription-intercom-service-Aqos1")
    with pytest.raises(ValueError, match="no translation"):
        definitions([["delete_user", "x"]])


@pytest.mark.slow
@needs_rabbitmq
@needs_postgres
@pytest.mark.timeout(300)
def test_the_cluster_bench_short_form_runs_clean() -> None:
    """Every configuration sets calls up with no closed-loop timeout, and the standbys are seen to stand by."""
    done = subprocess.run([sys.executable, "bench/scale_out.py", "--broker", "rabbitmq-cluster", "--short"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in ("box, 20 doors", "bridge pg x1, 1 call at a time", "bridge pg x1, 20 doors/site",
                 "bridge pg x2, 20 doors/site", "bridge pg x3, 20 doors/site", "1 site, 2 instances, 20 doors/site",
                 "1 site, 3 instances, 20 doors/site"):
        [line] = [x for x in lines if x.startswith(name)]
        assert "errors=0" in line, line  # (a configuration with no setup at all fails the run: returncode)
    assert sum("standbys" in x for x in lines) == 2, done.stdout
