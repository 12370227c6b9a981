"""``pacs storage`` from the command line against a running server's database and areas, and a
migration killed with SIGKILL part-way through leaving a good copy of every instance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from tests.archive.storage_helpers import (
    areas_of,
    cget,
    good_copies,
    make_study,
    send,
    storage_config,
)

PACS = [sys.executable, "-m", "pacs.cli"]


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pacs.toml"
    path.write_text(f'''
[storage]
rules_interval_seconds = 0
scrub_interval_seconds = 0

[[storage.areas]]
name = "nearline"
kind = "filesystem"
tier = "nearline"
path = "{tmp_path / 'nearline'}"

[[storage.areas]]
name = "tape"
kind = "container"
tier = "offline"
path = "{tmp_path / 'tape'}"

[[storage.rules]]
name = "to-tape"
from = "online"
to = "tape"
older_than_days = 365
''')
    return path


def pacs(server, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PACS_DATABASE_URL": server.settings.effective_database_url}
    return subprocess.run(PACS + ["storage", *args, "--config", str(config), "--data-dir",
                                  str(server.settings.data_dir)], capture_output=True, text=True, env=env, timeout=120)


def test_status_migrate_recall_scrub(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path))
    config = config_file(tmp_path)
    old = make_study(tmp_path / "old", 3, size=64, study_date="20200101")
    new = make_study(tmp_path / "new", 2, size=64, study_date=time.strftime("%Y%m%d"))
    send(server.dicom_port, old.paths + new.paths)

    dry = pacs(server, config, "migrate", "--dry-run")
    assert dry.returncode == 0 and "would move 1 studies, 3 instance(s)" in dry.stdout, dry.stdout + dry.stderr
    moved = pacs(server, config, "migrate", "--rule", "to-tape")
    assert moved.returncode == 0 and "moved 1 studies" in moved.stdout, moved.stdout + moved.stderr
    assert areas_of(server, old.study_uid) == {"tape"} and areas_of(server, new.study_uid) == {"online"}
    one = pacs(server, config, "migrate", "--study", new.study_uid, "--to", "nearline", "--compress", "jpeg-ls")
    assert one.returncode == 0 and "2 compressed" in one.stdout, one.stdout + one.stderr

    status = json.loads(pacs(server, config, "status", "--json").stdout)
    assert status["areas"]["tape"]["copies"] == 3 and status["areas"]["nearline"]["copies"] == 2
    assert status["studies_by_fastest_tier"] == {"online": 0, "nearline": 1, "offline": 1}
    table = pacs(server, config, "status").stdout
    assert "tape" in table and "container" in table and "offline" in table

    recall = pacs(server, config, "recall", old.study_uid)
    assert recall.returncode == 0 and "recalled 3 instance(s)" in recall.stdout, recall.stdout + recall.stderr
    assert areas_of(server, old.study_uid) == {"tape", "online"}
    received, final = cget(server.dicom_port, old.study_uid, [ExplicitVRLittleEndian])
    assert final.NumberOfCompletedSuboperations == 3

    scrub = pacs(server, config, "scrub")
    assert scrub.returncode == 0 and "8 copies checked, 0 corrupt" in scrub.stdout, scrub.stdout + scrub.stderr
    assert pacs(server, config, "recall", "1.2.3.4").returncode == 1


def test_migration_killed_part_way_leaves_a_good_copy(start_server, tmp_path):
    server = start_server(storage=storage_config(tmp_path))
    config = config_file(tmp_path)
    study = make_study(tmp_path / "study", 60, size=256)
    send(server.dicom_port, study.paths)
    env = {**os.environ, "PACS_DATABASE_URL": server.settings.effective_database_url}
    for delay, target in ((0.8, "nearline"), (1.2, "tape")):
        process = subprocess.Popen(PACS + ["storage", "migrate", "--study", study.study_uid, "--to", target,
                                           "--compress", "jpeg-ls", "--config", str(config), "--data-dir",
                                           str(server.settings.data_dir)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        counts = good_copies(server, study.study_uid)
        assert len(counts) == 60 and min(counts.values()) >= 1, (target, counts)
    finish = pacs(server, config, "migrate", "--study", study.study_uid, "--to", "tape",
                  *sum((["--from", a] for a in sorted(areas_of(server, study.study_uid) - {"tape"})), []))
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert areas_of(server, study.study_uid) == {"tape"}
    received, final = cget(server.dicom_port, study.study_uid, [ExplicitVRLittleEndian])
    assert final.NumberOfCompletedSuboperations == 60
