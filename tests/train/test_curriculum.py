import pytest

from mugv.config import ConfigError, load_config
from mugv.train.curriculum import Curriculum

STAGES = [
    "--stages=[{name='images', steps=10, image_fraction=[0.8, 0.2], buckets=['1x256x256', '17x256x256'], "
    "caption_dropout=0.2, lr=1e-3, warmup_steps=2, schedule='cosine'}, "
    "{name='longer', samples=40, first_frame_prob=0.5, continuation_prob=0.25}, "
    "{name='hq', plateau_patience=2, plateau_min_delta=0.01, lr=1e-5}]",
]


def curriculum(*extra) -> Curriculum:
    return Curriculum(load_config("debug", [*STAGES, *extra]))


def test_stage_one_anneals_the_mixture_and_follows_its_lr_schedule():
    cur = curriculum("--optim.lr=1e-4")
    first, middle = cur.settings(0, 0), cur.settings(5, 10)
    assert first.name == "images" and first.buckets == ["1x256x256", "17x256x256"]
    assert first.image_fraction == pytest.approx(0.8) and middle.image_fraction == pytest.approx(0.5)
    assert first.policy.caption_dropout == 0.2 and first.policy.first_frame_prob == 0.5  # inherits data.i2v_prob
    assert first.lr_scale == pytest.approx(0.5 * 1e-3 / 1e-4)  # warmup step 1 of 2, stage lr 1e-3
    assert cur.settings(9, 18).lr_scale < cur.settings(5, 10).lr_scale  # cosine decay


def test_stages_end_on_steps_then_samples_then_plateau():
    cur = curriculum()
    assert not cur.stage_done(9, 18) and cur.stage_done(10, 20)
    cur.advance(10, 20)
    assert cur.stage.name == "longer" and cur.settings(10, 20).policy.continuation_prob == 0.25
    assert cur.settings(12, 40).image_fraction is None
    assert not cur.stage_done(30, 59) and cur.stage_done(30, 60)
    cur.advance(30, 60)
    for loss in (1.0, 0.95, 0.945, 0.944):  # improvements under min_delta do not count
        cur.record_validation(loss)
    assert cur.evals_since_best == 2 and cur.stage_done(40, 80)
    cur.advance(40, 80)
    assert cur.finished


def test_resume_continues_inside_the_same_stage():
    cur = curriculum()
    cur.advance(10, 20)
    restored = curriculum()
    restored.load_state_dict(cur.state_dict())
    assert restored.stage.name == "longer" and restored.start_samples == 20
    other = Curriculum(load_config("debug", ["--stages=[{name='x', steps=1}]"]))
    with pytest.raises(ValueError, match="differ from the configured"):
        other.load_state_dict(cur.state_dict())


def test_without_stages_the_run_is_one_stage_with_the_optim_schedule():
    from mugv.train.schedule import lr_multiplier

    cfg = load_config("debug", ["--optim.warmup_steps=3"])
    cur = Curriculum(cfg)
    assert [cur.settings(s, 0).lr_scale for s in range(cfg.train.steps)] == pytest.approx(
        [lr_multiplier(s, cfg.train.steps, cfg.optim) for s in range(cfg.train.steps)]
    )


def test_a_stage_without_an_end_condition_is_a_config_error():
    with pytest.raises(ConfigError, match="needs an end condition"):
        load_config("debug", ["--stages=[{name='forever'}]"])
