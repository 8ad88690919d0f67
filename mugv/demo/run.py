"""`mugv demo`: the whole system on a laptop CPU, end to end, in minutes.

corpus -> `mugv curate` -> `mugv vae train` + `mugv vae eval` -> `mugv encode` -> `mugv train`
-> `mugv generate` -> prompt-adherence scoring, `mugv eval`, a `mugv annotate` grading campaign with
synthetic judges -> post-training (Flow-DPO on the SFT model's samples, judged pairwise) -> report.html.

Each stage runs the same command a user would, on the files the previous stage wrote, so any of
them can be rerun alone. A stage whose output exists is skipped: a stopped demo resumes.
"""

from __future__ import annotations

import csv
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


from mugv.cli import main as mugv_main
from mugv.config import DEFAULT_CFG_SCALE, DEFAULT_STEPS
from mugv.demo.world import Scene, render, split_scenes, sub_seed
from mugv.errors import MugvError, user_error_message


class DemoError(MugvError, RuntimeError):
    pass


def demo_vae_preset() -> str:
    """The VAE preset of the `vae-demo` profile, which every later stage must build to read its weights."""
    from mugv.config import load_config
    from mugv.vae_train.config import VAERunConfig

    return load_config("vae-demo", [], cls=VAERunConfig).model.preset


@dataclass
class DemoPlan:
    """How much work each stage does; `quick` is a smoke-test size. The training budgets are the
    `vae-demo` and `demo` profiles' own; `vae_overrides` / `dit_overrides` replace them."""

    clips_per_scene: int = 3
    sample_steps: int = DEFAULT_STEPS
    seeds_per_prompt: int = 2
    vae_overrides: tuple[str, ...] = ()
    dit_overrides: tuple[str, ...] = ()
    preference_overrides: tuple[str, ...] = ()  # both DPO and KTO runs
    preference_prompts: int = 0  # training prompts the post-training samples (0: all of them)

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(clips_per_scene=1, sample_steps=2, seeds_per_prompt=1,
                   vae_overrides=("--train.steps=4", "--stages.spatial_steps=1", "--stages.temporal_steps=1"),
                   dit_overrides=("--train.steps=4",), preference_overrides=("--train.steps=2",), preference_prompts=2)


def run(command: list[str]) -> None:
    """Run a mugv command in-process; a failure stops the demo naming the command, in one line."""
    try:
        code = mugv_main(["--debug", *command])  # its error comes here, to be reported with the command
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        raise DemoError(f"`mugv {' '.join(command)}` failed: {message}") from exc
    if code:
        raise DemoError(f"`mugv {' '.join(command)}` failed with exit code {code}")


class Demo:
    """`seed` seeds every random choice of the run (held-out scenes, corpus, training, sampling);
    `deterministic` trains with torch's deterministic algorithms (`train.deterministic`)."""

    def __init__(self, out: Path, plan: DemoPlan, seed: int = 0, deterministic: bool = False):
        self.out = out
        self.plan = plan
        self.seed = seed
        self.deterministic = deterministic
        self.timings: dict[str, float] = {}
        self.train_scenes, self.held_scenes = split_scenes(seed=seed)
        self.vae_preset = demo_vae_preset()
        out.mkdir(parents=True, exist_ok=True)
        seed_file = out / "seed.txt"  # a resumed demo must keep its seed: its finished stages used it
        if seed_file.is_file() and int(seed_file.read_text()) != seed:
            raise DemoError(f"{out} holds a demo run with --seed {int(seed_file.read_text())}; "
                            f"give --seed {seed} another --out")
        seed_file.write_text(f"{seed}\n")
        timings_file = out / "timings.json"
        if timings_file.is_file():
            self.timings = json.loads(timings_file.read_text())

    def training_flags(self) -> list[str]:
        """What `mugv vae train` and `mugv train` get from the demo's own flags."""
        return [f"--train.seed={self.seed}", *(["--train.deterministic=true"] if self.deterministic else [])]

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        print(f"\n=== mugv demo: {name} ===", flush=True)
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        (self.out / "timings.json").write_text(json.dumps(self.timings, indent=2))

    # ----- stages ----------------------------------------------------------------------------

    def corpus(self) -> Path:
        from mugv.demo.corpus import CorpusSpec, build_corpus
        from mugv.video.samples import bundled_sample_clips

        table = self.out / "corpus" / "corpus.csv"
        if not table.is_file():
            build_corpus(self.out / "corpus", self.train_scenes, CorpusSpec(clips_per_scene=self.plan.clips_per_scene,
                                                                          seed=self.seed),
                         bundled_sample_clips())
        return table

    def curate(self, table: Path) -> Path:
        manifest = self.out / "curate" / "manifest.parquet"
        if not manifest.is_file():
            run(["curate", str(table), "--out", str(self.out / "curate"), "--config", "curate-demo",
                 f"--balance.seed={self.seed}"])
        return manifest

    def vae(self, manifest: Path) -> Path:
        """Train the tiny VAE on the curated clips; evaluate it before and after on held-out clips."""
        import torch
        from safetensors.torch import save_file

        from mugv.models.vae.config import VAEConfig
        from mugv.models.vae.model import MUGVideoVAE
        from mugv.video.writer import write_mp4

        run_dir = self.out / "vae"
        held_out = run_dir / "eval-clips"
        held_out.mkdir(parents=True, exist_ok=True)
        for i, scene in enumerate(self.held_scenes[:3]):
            clip = render(scene, frames=17, height=64, width=64, seed=sub_seed(self.seed, 500 + i))
            write_mp4(held_out / f"{i}.mp4", clip, fps=12)
        untrained = run_dir / "untrained.safetensors"
        torch.manual_seed(self.seed)
        save_file(MUGVideoVAE(VAEConfig.from_preset(self.vae_preset)).state_dict(), untrained)
        evaluate = ["vae", "eval", str(held_out), "--preset", self.vae_preset, "--height", "64", "--width", "64", "--frames", "17"]
        run([*evaluate, "--weights", str(untrained), "--output", str(run_dir / "eval-before.json")])
        run(["vae", "train", "--config", "vae-demo", "--source", str(manifest), f"--run_dir={run_dir}",
             *self.training_flags(), *self.plan.vae_overrides])
        weights = latest_checkpoint_dir(run_dir) / "model.safetensors"
        run([*evaluate, "--weights", str(weights), "--output", str(run_dir / "eval-after.json")])
        return self.normalized_vae(manifest, weights)

    def normalized_vae(self, manifest: Path, weights: Path) -> Path:
        """The trained VAE with its per-channel latent mean / std measured on the curated clips, so
        the DiT sees unit-scale latents (the published VAE ships its constants; a new one needs them)."""
        import torch
        from safetensors.torch import load_file, save_file

        stats_file = self.out / "vae" / "latent-stats.json"
        run(["vae", "stats", str(manifest), "--weights", str(weights), "--preset", self.vae_preset, "--height", "64",
             "--width", "64", "--frames", "17", "--output", str(stats_file)])
        stats = json.loads(stats_file.read_text())
        state = load_file(weights)
        shape = state["latent_mean"].shape
        state["latent_mean"] = torch.tensor(stats["latent_mean"], dtype=torch.float32).view(shape)
        state["latent_std"] = torch.tensor(stats["latent_std"], dtype=torch.float32).view(shape)
        normalized = self.out / "vae" / "vae-normalized.safetensors"
        save_file(state, normalized)
        return normalized

    def encode(self, manifest: Path, vae_weights: Path) -> Path:
        shards = self.out / "shards"
        run(["encode", str(manifest), "--out", str(shards), "--vae-preset", self.vae_preset, "--vae-weights", str(vae_weights),
             "--text-encoder", "minilm", "--text-max-tokens", "32", "--buckets", "17x64x64,1x64x64", "--no-progress"])
        return shards

    def train(self, shards: Path) -> Path:
        run_dir = self.out / "dit"
        run(["train", "--config", "demo", f"--data.shards={shards}", f"--run_dir={run_dir}",
             *self.training_flags(), *self.plan.dit_overrides])
        return run_dir

    def prompts(self) -> tuple[Path, list[tuple[str, Scene]]]:
        """Held-out prompts (combinations never seen in training) and one I2V case."""
        rows, cases = [], []
        for scene in self.held_scenes:
            for seed in range(self.plan.seeds_per_prompt):
                name = f"t2v-{scene.color}-{scene.shape}-{scene.direction}-{seed}"
                rows.append({"prompt": scene.caption, "name": name, "seed": sub_seed(self.seed, seed), "image": ""})
                cases.append((name, scene))
        scene = self.held_scenes[0]
        reference = self.out / "generate" / "i2v-reference.png"
        reference.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(render(scene, frames=1, height=64, width=64, seed=sub_seed(self.seed, 99))[0]).save(reference)
        rows.append({"prompt": scene.caption, "name": f"i2v-{scene.color}-{scene.shape}-{scene.direction}",
                     "seed": sub_seed(self.seed, 0), "image": str(reference)})
        cases.append((rows[-1]["name"], scene))
        table = self.out / "generate" / "prompts.csv"
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["prompt", "name", "seed", "image"])
            writer.writeheader()
            writer.writerows(rows)
        return table, cases

    def generate(self, dit_dir: Path, vae_weights: Path) -> list[tuple[Path, Scene]]:
        table, cases = self.prompts()
        out = self.out / "generate"
        self.render(table, out, latest_checkpoint_dir(dit_dir), vae_weights)
        return [(out / f"{name}.mp4", scene) for name, scene in cases]

    def render(self, table: Path, out: Path, dit: Path, vae_weights: Path, lora: Path | None = None) -> None:
        """`mugv generate` of a prompts table with the demo's sampling settings."""
        run(["generate", "--dit", str(dit), "--vae", str(vae_weights), "--vae-preset", self.vae_preset,
             *(["--lora", str(lora)] if lora else []),
             "--text-encoder", "minilm", "--prompts", str(table), "--out", str(out), "--height", "64", "--width", "64",
             "--frames", "17", "--fps", "12", "--steps", str(self.plan.sample_steps), "--cfg", str(DEFAULT_CFG_SCALE),
             # guidance against the null text the model learned through caption dropout
             "--negative-prompt", ""])

    def post_train(self, dit_dir: Path, vae_weights: Path) -> dict:
        """Flow-DPO and Flow-KTO on the SFT model's own samples, labelled by the world's truth
        (mugv.demo.posttrain); the held-out prompts are rendered again with each adapter, same seeds."""
        from mugv.demo.posttrain import candidate_table, kto_label_counts, kto_weights, label_candidates

        post = self.out / "post"
        sft = latest_checkpoint_dir(dit_dir)
        scenes = self.train_scenes[:self.plan.preference_prompts or None]
        table, cases = candidate_table(scenes, self.seed, post / "candidates")
        if not all((post / "candidates" / f"{name}.mp4").is_file() for name, _ in cases):
            self.render(table, post / "candidates", sft, vae_weights)
        counts = post / "labels.json"
        if not counts.is_file():  # the campaigns' answers are stored once: a resumed demo reads them back
            figures = label_candidates([(post / "candidates" / f"{name}.mp4", scene) for name, scene in cases],
                                       post / "labels", post / "grades")
            counts.write_text(json.dumps(figures, indent=2))
        figures = json.loads(counts.read_text())
        pairs, graded = post / "labels" / "export" / "dpo.jsonl", post / "grades" / "export" / "kto.jsonl"
        figures["pairs"] = len(pairs.read_text().splitlines())
        desirable, undesirable = kto_label_counts(graded)
        figures["kto_rows"] = desirable + undesirable
        if figures["pairs"]:  # every two samples of a prompt equally right: nothing to prefer
            self.preference_run(pairs, "dpo", sft, vae_weights)
        if desirable and undesirable:  # KTO's reference point needs both kinds
            lambda_d, lambda_u = kto_weights(desirable, undesirable)
            self.preference_run(graded, "kto", sft, vae_weights,
                                [f"--preference.lambda_d={lambda_d}", f"--preference.lambda_u={lambda_u}"])
        return figures

    def preference_run(self, labels: Path, objective: str, sft: Path, vae_weights: Path,
                       overrides: list[str] | None = None) -> None:
        """`mugv encode` the exported labels, `mugv train --config {objective}-demo` from the SFT
        checkpoint, then the held-out prompts again with its adapter (the generate stage's table:
        same prompts, same seeds) into the folder `POST_RUNS` names."""
        from mugv.demo.posttrain import POST_RUNS

        post = self.out / "post"
        shards, run_dir = post / f"{objective}-shards", post / objective
        run(["encode", str(labels), "--out", str(shards), "--vae-preset", self.vae_preset,
             "--vae-weights", str(vae_weights), "--text-encoder", "minilm", "--text-max-tokens", "32",
             "--buckets", "17x64x64", "--no-progress"])
        run(["train", "--config", f"{objective}-demo", f"--data.shards={shards}", f"--run_dir={run_dir}",
             f"--checkpoint.init_weights={sft}", *self.training_flags(), *(overrides or []),
             *self.plan.preference_overrides])
        self.render(self.out / "generate" / "prompts.csv", post / POST_RUNS[objective][1], sft, vae_weights,
                    lora=run_dir / "lora.safetensors")

    def evaluate(self) -> Path:
        """`mugv eval` on the generated videos (offline metrics, with the demo world's adherence)."""
        out = self.out / "eval"
        if not (out / "summary.json").is_file():
            generated = self.out / "generate"
            run(["eval", str(generated), "--out", str(out), "--prompts", str(generated / "prompts.csv")])
        return out

    def annotate(self, videos: list[tuple[Path, Scene]]) -> dict:
        """A `mugv annotate` grading campaign of the generated videos, synthetic judges answering."""
        from mugv.demo.assess import grade_campaign

        figures = self.out / "annotate" / "stats.json"
        if figures.is_file():
            return json.loads(figures.read_text())
        return grade_campaign(videos, self.out / "annotate", self.seed)

    def all(self) -> Path:
        with self.stage("corpus"):
            table = self.corpus()
        with self.stage("curate"):
            manifest = self.curate(table)
        with self.stage("vae"):
            vae_weights = self.vae(manifest)
        with self.stage("encode"):
            shards = self.encode(manifest, vae_weights)
        with self.stage("train"):
            dit_dir = self.train(shards)
        with self.stage("generate"):
            videos = self.generate(dit_dir, vae_weights)
        with self.stage("eval"):
            eval_dir = self.evaluate()
        with self.stage("annotate"):
            grades = self.annotate(videos)
        with self.stage("post-train"):
            preferences = self.post_train(dit_dir, vae_weights)
        with self.stage("report"):
            from mugv.demo.summary import write_demo_report

            report = write_demo_report(self, manifest, dit_dir, videos, eval_dir, grades, preferences)
        print(f"\nmugv demo: report at {report}")
        return report


def latest_checkpoint_dir(run_dir: Path) -> Path:
    from mugv.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise DemoError(f"no checkpoint in {run_dir / 'checkpoints'}")
    return found


def run_demo(out: Path, quick: bool = False, seed: int = 0, deterministic: bool = False) -> Path:
    return Demo(out, DemoPlan.quick() if quick else DemoPlan(), seed=seed, deterministic=deterministic).all()
