"""Render each main screen of the desktop app with real data to docs/screenshots/*.png.

A real workload (a small GPT-2 trained on random tokens) is launched from the app in run mode
(in-process agent: steps, per-module timing), then the same script at a smaller batch size is
attached to with stack sampling (py-spy); every number, curve and layer row in the pictures was
measured on this machine, and the two sessions give the comparison. Runs offscreen:

    QT_QPA_PLATFORM=offscreen python scripts/screenshots.py [--out docs/screenshots] [--seconds 60]

docs/screenshots/ is made with --seconds 60: each session lasts at least a minute.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = """
import argparse, time, torch
from transformers import GPT2Config, GPT2LMHeadModel
import os, threading
def _orphan_watch(ppid=os.getppid()):  # end with the process that started us, even if it crashed
    while True:
        time.sleep(1.0)
        if os.getppid() != ppid:
            os._exit(0)
threading.Thread(target=_orphan_watch, daemon=True).start()

p = argparse.ArgumentParser()
p.add_argument("--batch-size", type=int, default=8)
args = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64)
model = GPT2LMHeadModel(cfg)
model.loss_type = "ForCausalLM"
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

def next_batch():
    time.sleep(0.004)  # a data loader's latency
    return torch.randint(0, 256, (args.batch_size, 64))

print("ready", flush=True)
while True:
    ids = next_batch()
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
"""


def _quiet_offscreen_warnings() -> None:
    from PySide6.QtCore import qInstallMessageHandler

    def handler(_mode, _context, message):
        if "propagateSizeHints" not in message:
            sys.stderr.write(message + "\n")

    qInstallMessageHandler(handler)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each recorded session")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from wattlens.app.gui.main import build_main_window, ensure_app
    from wattlens.app.gui.models.settings_model import MemorySettings

    app = ensure_app()
    _quiet_offscreen_warnings()
    tmp = tempfile.TemporaryDirectory(prefix="wattlens-shots-")
    db = Path(tmp.name) / "screenshots.db"
    w = build_main_window(db=str(db), settings_backend=MemorySettings())
    w.settings.update(stack_rate_hz=100, grid_g_per_kwh=380.0)
    w.resize(1280, 860)
    w.show()

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def spin_until(cond, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > end:
                raise SystemExit(f"timed out; window says: {w.messages.text}")
            app.processEvents()
            time.sleep(0.01)

    def shot(name: str) -> None:
        spin(0.3)
        path = out / f"{name}.png"
        w.grab().save(str(path))
        print(path)

    spin_until(lambda: w.store is not None and w.discovery is not None)
    script = Path(tmp.name) / "train_gpt2.py"
    script.write_text(WORKLOAD)
    workloads = []
    try:
        # session 1: run mode (Launch…) — the in-process agent reports steps and per-module timing
        from wattlens.app.gui.models.run_model import LaunchRequest

        w.launch(LaunchRequest([sys.executable, str(script), "--batch-size", "8"], tmp.name),
                 "GPT-2 tiny, batch 8 (run mode)")
        spin_until(lambda: w.run is not None)
        w.messages.hide()
        spin_until(lambda: len(w.live_model.steps) > 0 and len(w.live_model.layers) > 0)
        spin(args.seconds)
        w.live_view.panel.tabs.setCurrentIndex(0)
        shot("live")
        w.live_view.panel.tabs.setCurrentIndex(1)
        shot("live-layers")
        w.live_view.panel.tabs.setCurrentIndex(0)
        w.settings.update(theme="dark")
        spin(0.5)
        shot("live-dark")
        w.settings.update(theme="light")
        w.live_view.end_program.setChecked(True)
        w.live_view.stop_button.click()
        spin_until(lambda: w.run is None)
        w.messages.hide()

        # session 2: attach mode with stack sampling, on a separately started job
        job = subprocess.Popen([sys.executable, str(script), "--batch-size", "2"], stdout=subprocess.PIPE,
                               text=True, cwd=tmp.name)
        workloads.append(job)
        assert job.stdout.readline().strip() == "ready", "the workload did not start"
        w.tabs.setCurrentWidget(w.attach_view)
        w.attach_view.refresh()
        spin_until(lambda: w.attach_view.table_model.row_of(job.pid) is not None
                   and w.processes.get(job.pid).torch is not None
                   and w.processes.get(job.pid).cpu_percent is not None)  # the picker rescans by itself
        w.attach_view.filter.setText("python")
        w.attach_view.select_pid(job.pid)
        shot("attach")
        w.attach(job.pid)
        spin_until(lambda: w.run is not None)
        w.messages.hide()
        spin(args.seconds)
        w.live_view.panel.tabs.setCurrentIndex(1)
        spin_until(lambda: len(w.live_model.layers) > 0 and not w.live_model.layers.pending)
        shot("live-attach-layers")
        w.live_view.panel.tabs.setCurrentIndex(0)
        w.stop_session()
        spin_until(lambda: w.run is None)
        w.store.rename_session(2, "GPT-2 tiny, batch 2 (attach + py-spy)")
        w.messages.hide()

        sv = w.sessions_view
        w.tabs.setCurrentWidget(sv)
        sv.refresh()
        spin_until(lambda: sv.table.rowCount() == 2)
        sv.select_ids([1])
        sv.open_selected()
        spin_until(lambda: sv.stack.currentWidget() is sv.detail)
        sv.detail.panel.tabs.setCurrentIndex(1)
        shot("sessions-layers")
        sv.detail.panel.tabs.setCurrentIndex(0)
        shot("sessions")
        sv.select_ids([1, 2])
        sv.compare_selected()
        spin_until(lambda: sv.stack.currentWidget() is sv.compare)
        shot("compare")

        ev = w.export_view
        w.tabs.setCurrentWidget(ev)
        ev.choose(1, "md", str(Path(tmp.name) / "wattlens-session-1-vs-2.md"), compare_id=2)
        ev.export()
        spin_until(lambda: not ev._running)
        w.messages.hide()
        shot("export")  # after an export: "Saved to …" and the "Open the file" button
        w.tabs.setCurrentWidget(w.settings_view)
        shot("settings")
        w.tabs.setCurrentWidget(w.doctor_view)
        spin_until(lambda: w.doctor_view.table.rowCount() > 0)
        shot("doctor")
    finally:
        for p in workloads:
            if p.poll() is None:
                p.kill()
                p.wait()
        w.close()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
