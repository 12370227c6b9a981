"""pacs.db.migrate: alembic's upgrade to head, skipped for a schema already there."""

from __future__ import annotations

import subprocess
import sys

from alembic.config import Config
from alembic.script import ScriptDirectory

from pacs.db import MIGRATIONS_DIR, Database, newest_revision, schema_revision


def test_the_newest_file_is_alembics_one_head():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [newest_revision()]


def test_a_new_database_is_migrated_to_the_newest_revision(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    assert schema_revision(db.engine) is None
    db.migrate()
    assert schema_revision(db.engine) == newest_revision()
    db.dispose()


def test_a_schema_at_the_newest_revision_is_left_without_loading_alembic(database_url):
    db = Database(database_url)
    db.migrate()
    db.dispose()
    check = ("import sys; from pacs.db import Database; db = Database(sys.argv[1]); db.migrate(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'pypinyin')))")
    done = subprocess.run([sys.executable, "-c", check, database_url], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
