import json

import pytest
from safetensors import safe_open

from analysis.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_experts_list(capsys):
    code, out, _ = run(capsys, "experts", "list", "--json")
    names = [row["name"] for row in json.loads(out)]
    assert code == 0 and names[:3] == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m"]


def test_experts_info(capsys):
    code, out, _ = run(capsys, "experts", "info", "--expert", "tiny-gemma", "--json")
    info = json.loads(out)
    assert code == 0 and info["n_layers"] == 2 and info["d_model"] == 64 and info["architecture"] == "gemma3"


def test_generate_json_and_prompts_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Kelly is warm\n\nJoseph is a\n", encoding="utf-8")
    code, out, _ = run(capsys, "generate", "--expert", "tiny-llama", "--prompts-file", str(prompts),
                       "--max-new-tokens", "5", "--json", "--seed", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["prompt"] for r in rows] == ["Kelly is warm", "Joseph is a"]
    assert all(r["n_tokens"] <= 5 and r["seed"] == 3 for r in rows)


def test_cache_writes_safetensors(capsys, tmp_path):
    out_file = tmp_path / "acts.safetensors"
    code, out, _ = run(capsys, "cache", "--expert", "tiny-llama", "--names", "blocks.1.hook_resid_post,hook_embed",
                       "-o", str(out_file), "Kelly is warm", "Joseph is")
    assert code == 0 and "blocks.1.hook_resid_post [2," in out
    with safe_open(str(out_file), "pt") as f:
        assert f.get_tensor("act.blocks.1.hook_resid_post").shape[0] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--expert", "nope", "hi"], "unknown expert 'nope'; known experts:"),
        (["generate", "--expert", "tiny-llama"], "no prompts given"),
        (["cache", "--expert", "tiny-llama", "--names", "blocks.9.hook_resid_post", "-o", "x.st", "hi"],
         "layer 9 in 'blocks.9.hook_resid_post' is out of range; this expert has layers 0..1"),
        (["cache", "--expert", "tiny-llama", "--names", "blocks.1.hook_resid", "-o", "x.st", "hi"],
         "unknown hook name 'blocks.1.hook_resid'; did you mean"),
        (["generate", "--expert", "tiny-llama", "--max-new-tokens", "0", "hi"], "max_new_tokens=0"),
        (["generate", "--expert", "tiny-llama", "--batch-size", "0", "hi"], "invalid batch size 0"),
        (["cache", "--expert", "tiny-llama", "--names", "hook_embed", "-o", "x.st", "--batch-size", "0", "hi"],
         "invalid batch size 0"),
        (["generate", "--expert", "tiny-llama", "--device", "nonsense", "hi"], "unknown device 'nonsense'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_non_utf8_prompts_file(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    code, _, err = run(capsys, "generate", "--expert", "tiny-llama", "--prompts-file", str(bad))
    assert code == 2 and "is not UTF-8" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "generate", "--expert", "tiny-llama", "--device", "cuda", "hi")
    assert code == 2 and "no CUDA device" in err and err.count("\n") == 1


def test_ablate_defaults_to_removing_the_component_and_the_record_says_so(capsys, tmp_path):
    import torch

    from experts.expert import Expert
    from steer.vectors.vector import Provenance, SteeringVector

    expert = Expert.load("tiny-llama")
    path = tmp_path / "v.safetensors"
    SteeringVector({1: torch.ones(expert.d_model)},
                   provenance=Provenance(fingerprint=expert.fingerprint, coef_range=(10.0, 30.0))).save(path)
    code, out, _ = run(capsys, "generate", "--expert", "tiny-llama", "--vector", str(path), "--operator", "ablate",
                       "--positions", "from:1", "--max-new-tokens", "3", "--json", "hi")
    record = json.loads(out.splitlines()[0])
    assert code == 0
    assert record["steering"] | {"vector_sha256": None} == {
        "vector": str(path), "vector_sha256": None, "layers": [1], "hook": "hook_resid_post", "coef": 1.0,
        "coef_default": True, "operator": "ablate", "positions": "from:1", "made_for": expert.fingerprint, "forced": False}
    assert record["fingerprint"] == expert.fingerprint and record["dtype"] == "float32" and "torch" in record["versions"]
    assert record["max_new_tokens"] == 3 and record["batch_size"] == 8
    code, out, _ = run(capsys, "generate", "--expert", "tiny-llama", "--vector", str(path), "--max-new-tokens", "2",
                       "--json", "hi")
    assert json.loads(out.splitlines()[0])["steering"]["coef"] == 20.0  # add: the calibrated mid-range


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("steer 0.1.0")


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--max-new-tokens MAX_NEW_TOKENS\n                        default: 64" in out and "(default: 1)" in out
    assert "(default: None)" not in out


def _commands(parser, path=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
    if path:
        yield " ".join(path), {s for a in parser._actions for s in a.option_strings}


def test_flag_names_are_consistent_across_commands():
    from analysis.cli import build_parser

    commands = dict(_commands(build_parser()))
    for name, options in commands.items():
        assert not options & {"--prompts", "--evaluator", "--output-dir"}, name
    assert {"-o", "--output"} <= commands["cache"] and "--out" not in commands["cache"]  # one file
    assert "--out" in commands["route train"] and "--output" not in commands["route train"]  # a folder
    assert {"route run", "route train", "route eval"} <= set(commands)  # real subcommands, in `steer route --help`
    assert "--expert" in commands["experts info"]
    for name in ("vector sweep", "vector layers", "rad sweep", "rad compare"):
        assert "--prompts-file" in commands[name], name
    for name in ("vector sweep", "rad sweep", "rad compare"):
        assert "--scorer" in commands[name], name


# Commands whose result is the stream they print (serve) or a help page have no --json; every other leaf does.
NO_RESULT = {"serve"}


def test_every_command_that_produces_a_result_has_json():
    from analysis.cli import build_parser

    leaves = {name: options for name, options in _commands(build_parser())
              if name not in ("experts", "vector", "audit", "rad", "route")}
    missing = sorted(name for name, options in leaves.items() if "--json" not in options and name not in NO_RESULT)
    assert not missing, f"commands without --json: {missing}"


def test_json_record_goes_to_stdout_and_the_summary_to_stderr(capsys, tmp_path):
    code, out, err = run(capsys, "cache", "--expert", "tiny-llama", "--names", "blocks.0.hook_resid_post",
                         "-o", str(tmp_path / "acts.safetensors"), "--json", "hello there")
    record = json.loads(out)
    assert code == 0 and "wrote" in err and record["shapes"]["blocks.0.hook_resid_post"][0] == 1
    assert record["expert"] == "tiny-llama" and record["fingerprint"] and len(record["sha256"]) == 64
