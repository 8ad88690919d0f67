from mugv.cli import main


def test_info_prints_parameters_and_flops(capsys):
    assert main(["info", "--model", "10b", "--frames", "105", "--height", "720", "--width", "1280"]) == 0
    out = capsys.readouterr().out
    assert "10,830,321,984 (10.83 B)" in out
    assert "latent 14 x 90 x 160 -> 50,402 tokens" in out
    assert "training FLOPs per sample" in out
