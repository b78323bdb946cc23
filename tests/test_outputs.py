"""Tool outputs never destroy data: export and conversion refuse a foreign or input-holding --output.

The policy (adaptive_lm_ds/outputs.py) is one function; these tests run the two tools as users do and
look at what is left on disk afterwards.
"""

import pytest

from adaptive_lm_ds import cli
from adaptive_lm_ds.commands import convert_fairseq_ckpt
from adaptive_lm_ds.errors import UserError
from adaptive_lm_ds.formats.consolidated import load_consolidated, save_consolidated
from adaptive_lm_ds.outputs import OutputError, check_output_folder
from adaptive_lm_ds.testing import run_on_ranks

from .training_runs import train_on_rank


@pytest.fixture(scope="module")
def save_dir(tiny_run_setup, tmp_path_factory):
    """A real one-update training checkpoint (tiny model, one rank)."""
    data, init = tiny_run_setup
    save = tmp_path_factory.mktemp("outputs") / "save"
    argv = ["--data", str(data), "--init-from", str(init), "--tokens-per-sample", "32", "--batch-size", "4",
            "--lr-scheduler", "fixed", "--warmup-updates", "0", "--max-update", "1", "--max-valid-steps", "1",
            "--save-dir", str(save), "--deepspeed_config", "ds_configs/zero1.json"]  # fmt: skip
    result = run_on_ranks(train_on_rank, nprocs=1, timeout=300, argv=argv)[0]
    assert result["error"] is None, result["error"]
    return save


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def _export(checkpoint, output, *extra):
    """adaptive-lm-export as the command runs it: its exit code (2: refused in one line)."""
    return cli.run("adaptive-lm-export", ["--checkpoint", str(checkpoint), "--output", str(output), *extra])


def test_export_refuses_a_data_bin_and_leaves_it_intact(save_dir, tiny_run_setup, tmp_path, capsys):
    data, _ = tiny_run_setup
    target = tmp_path / "data-bin"
    target.mkdir()
    for name in ("train.bin", "train.idx", "notes.txt"):
        (target / name).write_bytes((data / "train.bin").read_bytes()[:64] if name != "notes.txt" else b"mine")
    before = _tree(target)
    assert _export(save_dir, target) == 2
    assert "not a previous output of export_checkpoint" in capsys.readouterr().err
    assert _tree(target) == before


def test_export_never_writes_over_its_own_checkpoint_even_with_force(save_dir, capsys):
    before = _tree(save_dir)
    assert _export(save_dir, save_dir, "--force") == 2
    assert "is the input" in capsys.readouterr().err
    assert _tree(save_dir) == before


def test_export_replaces_its_own_previous_output_and_force_replaces_a_foreign_folder(save_dir, tmp_path):
    out = tmp_path / "model"
    assert _export(save_dir, out) == 0
    assert _export(save_dir, out) == 0  # a previous export: replaced without --force
    (out / "notes.txt").write_text("mine")
    assert _export(save_dir, out) == 2  # now it holds a file the tool did not write
    assert (out / "notes.txt").read_text() == "mine"
    assert _export(save_dir, out, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == ["checksums.sha256", "config.json", "dict.txt", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left behind


def test_to_fairseq_writes_only_what_was_asked(tiny_run_setup, tmp_path):
    _, init = tiny_run_setup
    out = tmp_path / "fairseq"
    out.mkdir()
    (out / "dict.txt").write_text("precious 1\n")  # a dict.txt of something else, beside the output
    convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(init), "--output", str(out / "model.pt")])
    assert (out / "dict.txt").read_text() == "precious 1\n"
    assert sorted(p.name for p in out.iterdir()) == ["dict.txt", "model.pt"]
    convert_fairseq_ckpt.main(
        ["--to-fairseq", "--input", str(init), "--output", str(tmp_path / "b.pt"), "--save-dict", str(tmp_path / "d")]
    )
    assert (tmp_path / "d").read_text() == (init / "dict.txt").read_text()


def test_to_fairseq_refuses_to_overwrite_an_existing_file_without_force(tiny_run_setup, tmp_path):
    _, init = tiny_run_setup
    target = tmp_path / "checkpoint_best.pt"
    target.write_bytes(b"the user's own fairseq model")
    with pytest.raises(UserError, match="exists; .* --force"):
        convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(init), "--output", str(target)])
    assert target.read_bytes() == b"the user's own fairseq model"
    convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(init), "--output", str(target), "--force"])
    assert target.read_bytes()[:2] != b"th"


def test_from_fairseq_refuses_a_foreign_folder_and_the_folder_of_its_input(tiny_run_setup, tmp_path):
    _, init = tiny_run_setup
    pt = tmp_path / "in" / "model.pt"
    pt.parent.mkdir()
    convert_fairseq_ckpt.main(["--to-fairseq", "--input", str(init), "--output", str(pt)])
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match="not a previous output of convert_fairseq_ckpt"):
        convert_fairseq_ckpt.main(["--input", str(pt), "--output", str(notes)])
    assert (notes / "todo.txt").read_text() == "mine"
    with pytest.raises(UserError, match="contains the input"):
        convert_fairseq_ckpt.main(["--input", str(pt), "--output", str(pt.parent), "--force"])
    assert pt.is_file()
    out = tmp_path / "converted"
    for _ in range(2):  # the second run replaces the tool's own previous output
        convert_fairseq_ckpt.main(["--input", str(pt), "--output", str(out), "--dict", str(init / "dict.txt")])
    assert load_consolidated(out)[0] == load_consolidated(init)[0]


def test_save_consolidated_applies_the_same_policy(tiny_run_setup, tmp_path):
    _, init = tiny_run_setup
    cfg, state, dictionary = load_consolidated(init)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        save_consolidated(tmp_path / "m", cfg, state, dictionary)
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="is the input"):
        check_output_folder(tmp_path, "x", (), force=True, inputs=[tmp_path])


def test_written_files_and_folders_follow_the_users_umask(tiny_run_setup, tmp_path):
    """Reference: what open()/mkdir give under umask 022 (0644 files, 0755 folders), not mkstemp's 0600/0700."""
    import os
    import stat

    _, init = tiny_run_setup
    cfg, state, dictionary = load_consolidated(init)
    old = os.umask(0o022)
    try:
        save_consolidated(tmp_path / "model", cfg, state, dictionary, writer="test")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "model") == 0o755
    assert {p.name: mode(p) for p in (tmp_path / "model").iterdir()} == {
        p.name: 0o644 for p in (tmp_path / "model").iterdir()
    }
