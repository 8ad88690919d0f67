from mugv.cli import main


def test_info_prints_parameters_and_flops(capsys):
    assert main(["info", "--model", "10b", "--frames", "105", "--height", "720", "--width", "1280"]) == 0
    out = capsys.readouterr().out
    assert "10,830,321,984 (10.83 B)" in out
    assert "latent 14 x 90 x 160 -> 50,402 tokens" in out
    assert "training FLOPs per sample" in out


def test_info_reads_any_registered_family(capsys):
    assert main(["info", "--family", "mugv-vae", "--model", "mugv"]) == 0
    assert "mugv-vae mugv: 411,696,059 parameters" in capsys.readouterr().out
    assert main(["info", "--family", "wan-dit"]) == 0
    assert "wan-dit enhancer: 1,419,095,104 parameters" in capsys.readouterr().out
    assert main(["info", "--family", "sora"]) == 2
    assert "model family 'sora' is not registered; known: mug-dit, mugv-vae, wan-dit, wan-vae" in capsys.readouterr().err
    assert main(["info", "--model", "vae-tiny"]) == 2
    assert "not a mug-dit preset" in capsys.readouterr().err
