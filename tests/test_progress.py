import io
import re
from pathlib import Path

from tqdm import tqdm

import mugv
from mugv.utils import progress
from mugv.utils.progress import LineProgress, progress_bar, track


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_of_the_work_not_a_redraw_per_step():
    log, clock = io.StringIO(), FakeClock()
    with LineProgress(1000, desc="train", unit="step", file=log, clock=clock) as bar:
        for step in range(1000):
            clock.now += 0.01
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10
    assert lines[0].startswith("train:  10% 100/1000 [00:01<00:09, 100.00step/s")
    assert lines[-1].startswith("train: 100% 1000/1000") and "loss=0.0010" in lines[-1]


def test_slow_work_prints_a_line_each_interval():
    log, clock = io.StringIO(), FakeClock()
    bar = LineProgress(1000, desc="encode", unit="clip", file=log, clock=clock, interval_s=30)
    for _ in range(6):  # 20 s per clip: never a tenth of the work, a line every second clip
        clock.now += 20
        bar.update(1)
    bar.close()
    assert [line.split(" [")[0] for line in log.getvalue().splitlines()] == [
        "encode:   0% 2/1000", "encode:   0% 4/1000", "encode:   1% 6/1000"
    ]


def test_close_prints_the_unprinted_end_once():
    log, clock = io.StringIO(), FakeClock()
    bar = LineProgress(None, desc="curate", unit="video", initial=5, file=log, clock=clock)
    bar.update(2)
    bar.close()
    bar.close()
    assert log.getvalue().count("\n") == 1 and log.getvalue().startswith("curate: 7 [")


def test_progress_bar_is_live_on_a_terminal_lines_in_a_log_and_silent_when_disabled():
    assert isinstance(progress_bar(10, desc="x", unit="step", file=io.StringIO()), LineProgress)
    live = progress_bar(10, desc="x", unit="step", file=Terminal())
    assert isinstance(live, tqdm) and not live.disable
    live.close()
    quiet = io.StringIO()
    with progress_bar(10, desc="x", unit="step", enabled=False, file=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_track_counts_each_item_after_its_work(capsys):
    seen = []
    for item in track(["a", "b", "c"], desc="eval", unit="video"):  # pytest's captured stderr is no terminal
        seen.append((item, capsys.readouterr().err))
    assert [item for item, _ in seen] == ["a", "b", "c"]
    assert seen[1][1].startswith("eval:  33% 1/3") and seen[2][1].startswith("eval:  67% 2/3")
    assert capsys.readouterr().err.startswith("eval: 100% 3/3")


def test_every_progress_bar_is_made_by_the_helper():
    imports_tqdm = re.compile(r"^\s*(from tqdm\b|import tqdm\b)", re.MULTILINE)
    elsewhere = [str(path) for path in Path(mugv.__file__).parent.rglob("*.py")
                 if path != Path(progress.__file__) and imports_tqdm.search(path.read_text())]
    assert not elsewhere, f"use mugv.utils.progress instead of tqdm in {elsewhere}"
