"""The demo's post-training helpers: KTO's class weights from the exported labels."""

import json

import pytest

from mugv.demo.posttrain import kto_label_counts, kto_weights


def test_kto_label_counts_read_the_export(tmp_path):
    labels = tmp_path / "kto.jsonl"
    labels.write_text("".join(json.dumps({"prompt": "p", "completion": f"{i}.mp4", "label": i % 3 == 0}) + "\n"
                              for i in range(9)))
    assert kto_label_counts(labels) == (3, 6)


@pytest.mark.parametrize("desirable, undesirable", [(3, 6), (6, 3), (5, 5), (1, 40)])
def test_kto_weights_make_both_classes_weigh_alike(desirable, undesirable):
    lambda_d, lambda_u = kto_weights(desirable, undesirable)
    assert lambda_d * desirable == pytest.approx(lambda_u * undesirable)
    assert min(lambda_d, lambda_u) == 1.0  # the commoner class keeps weight 1
