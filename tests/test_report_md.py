import os
import stat
import time

from wattlens.app.report.formats import write_report
from wattlens.profiler.session import ProfilingSession
from wattlens.profiler.store import Store


def test_markdown_escapes_user_text_and_reports_are_shareable(db_path, tmp_path):
    store = Store(db_path)
    s = ProfilingSession(store, name="<script>alert(1)</script> | pipe", interval_s=0.05)
    sid = s.start()
    time.sleep(0.4)
    s.stop("completed", "done")
    old = os.umask(0o022)
    try:
        out = write_report(store, sid, "md", tmp_path / "r.md")
    finally:
        os.umask(old)
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "\\|" in text
    assert "| estimated |" in text  # the method stands next to the number
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644  # 0o666 minus the umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.md")]  # no temp file left
