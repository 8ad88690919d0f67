"""The README's main job at smoke-test size: every stage runs on the files the previous one wrote."""

import json

from mugv.cli import main
from mugv.demo.run import Demo, DemoPlan, latest_checkpoint_dir


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    report = (out / "report.html").read_text()
    for heading in ("Curation", "Video VAE", "DiT training", "Generated videos", "Offline metrics (mugv eval)",
                    "Human-evaluation stand-in (mugv annotate)", "Post-training: Flow-DPO and Flow-KTO on judged samples",
                    "Time per stage"):
        assert heading in report
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"corpus", "curate", "vae", "encode", "train", "generate", "eval", "annotate", "post-train",
                                                            "report"}
    adherence = json.loads((out / "adherence.json").read_text())
    assert adherence["videos"] == 7 and 0.0 <= adherence["color_accuracy"] <= 1.0
    assert 0.0 <= adherence["shape_accuracy"] <= 1.0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["scored"] == 7 and abs(summary["metrics"]["demo_color"]["mean"] - adherence["color_accuracy"]) < 1e-5
    grades = json.loads((out / "annotate" / "stats.json").read_text())
    assert grades["answers"] == 3 * 7 and (out / "annotate" / "export" / "kto.jsonl").is_file()
    assert len(list((out / "generate").glob("*.mp4"))) == 7
    strips = sorted((out / "generate").glob("*.frames.png"))
    assert len(strips) == 7 and all(f"src='generate/{s.name}'" in report for s in strips)
    # post-training: 2 prompts x 4 judged samples, every pair once and each sample pass/fail; the held-out
    # prompts rendered again with each adapter that trained
    post = adherence["post_training"]
    assert post["labels"]["candidates"] == 8 and len(list((out / "post" / "candidates").glob("*.mp4"))) == 8
    pairs = (out / "post" / "labels" / "export" / "dpo.jsonl").read_text().splitlines()
    assert post["labels"]["pairs"] == len(pairs) <= 2 * 6  # 2 prompts, every two of 4 samples once
    graded = [json.loads(line) for line in (out / "post" / "grades" / "export" / "kto.jsonl").read_text().splitlines()]
    assert post["labels"]["kto_rows"] == len(graded) == 8
    assert sum(row["label"] for row in graded) == post["labels"]["candidates_fully_right"]
    trained = {"SFT + DPO": bool(pairs), "SFT + KTO": 0 < post["labels"]["candidates_fully_right"] < 8}
    assert set(post) == {"SFT", "labels"} | {name for name, ran in trained.items() if ran} | {
        run for run, name in (("dpo", "SFT + DPO"), ("kto", "SFT + KTO")) if trained[name]}
    for run, renders, name in (("dpo", "generate", "SFT + DPO"), ("kto", "generate-kto", "SFT + KTO")):
        if trained[name]:  # a 4-step model's samples may all be equally wrong: then there is nothing to learn
            assert post[run]["steps"] == 2 and len(list((out / "post" / renders).glob("*.mp4"))) == 7
    # the KTO run's path whatever the 4-step model's samples: half the candidates labelled pass
    demo = Demo(out, DemoPlan.quick())
    labels = tmp_path / "kto.jsonl"
    candidates = sorted((out / "post" / "candidates").glob("*.mp4"))
    labels.write_text("".join(json.dumps({"prompt": "a red circle moves to the right on a gray background",
                                          "completion": str(path), "label": i % 2 == 0}) + "\n"
                              for i, path in enumerate(candidates)))
    demo.preference_run(labels, "kto", latest_checkpoint_dir(out / "dit"),
                        out / "vae" / "vae-normalized.safetensors", ["--preference.lambda_d=1.0"])
    assert len(list((out / "post" / "generate-kto").glob("*.mp4"))) == 7
    assert len((out / "post" / "kto" / "metrics.jsonl").read_text().splitlines()) == 2
    # a rerun resumes: finished stages are not redone
    assert main(["demo", "--out", str(out), "--quick"]) == 0
