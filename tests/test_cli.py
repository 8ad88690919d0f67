import argparse
import re
import subprocess
import sys

import mugv
from mugv.cli import COMMANDS, build_parser, main


def test_help_and_version_start_without_torch():
    script = (
        "import sys\n"
        "from mugv.cli import main\n"
        "for argv in (['--help'], ['--version'], ['train', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', argv, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "torch not loaded ['--help']", "torch not loaded ['--version']", "torch not loaded ['train', '--help']",
    ]
    # every command is listed (argparse puts a long name's help on the next line)
    assert all(re.search(rf"^    {re.escape(name)}(\s|$)", done.stdout, re.M) for name in COMMANDS)


def test_version_prints_the_package_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"mugv {mugv.__version__}"


def test_every_command_module_registers_the_command_it_is_listed_under():
    for name in COMMANDS:
        subparsers = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        command = subparsers.choices[name]
        # the module's own parser (it has -h), not the name-only entry that lists the other commands
        assert any(isinstance(a, argparse._HelpAction) for a in command._actions), name
