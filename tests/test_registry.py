"""Registries: discovery, suggestions, heads, duplicates, broken plugins, one-file plugins (strategies, heads)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from cml_bench.registry import BENCHMARKS, HEADS, STRATEGIES, Registry, RegistryError, split_head

BUILTIN = {"finetune", "ewc", "reservoir", "prs", "multitask"}


def test_builtin_strategies_and_benchmarks_are_discovered():
    assert BUILTIN <= set(STRATEGIES.names())
    assert "synth-cocoseq" in BENCHMARKS.names()
    assert STRATEGIES.names("*r*") == sorted(n for n in STRATEGIES.names() if "r" in n)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(RegistryError) as err:
        STRATEGIES.get("prs_reservior")
    message = str(err.value)
    assert "Unknown strategy 'prs_reservior'" in message and "Available:" in message
    assert "finetune" in message and "python -m cml_bench list" in message
    with pytest.raises(RegistryError, match="Did you mean 'reservoir'"):
        STRATEGIES.get("resevoir")


def test_head_suffix():
    assert split_head("ewc+cos") == ("ewc", "cos")
    with pytest.raises(RegistryError, match=r"Unknown head suffix '\+sca'.*Did you mean '\+ssca'"):
        split_head("prs+sca")


def test_duplicate_and_plus_names_rejected():
    registry = Registry("strategy", "strategies", "cml_bench.test-none")
    registry.register("a", object())
    with pytest.raises(RegistryError, match="Duplicate strategy name 'a'"):
        registry.register("a", object())
    with pytest.raises(RegistryError, match="must not contain"):
        registry.register("a+b", object())


def test_broken_plugin_does_not_break_others(tmp_path, monkeypatch):
    pkg = tmp_path / "brokenpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text(textwrap.dedent("""
        from cml_bench.registry import Registry
    """))
    (pkg / "broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("strategy", "brokenpkg", "cml_bench.test-none")
    assert registry.names() == []
    assert "broken" in registry.broken
    with pytest.raises(RegistryError, match="failed to import: ImportError: needs a package"):
        registry.get("broken")


PLUGIN = '''
"""A strategy in one file: registers itself, adds no plugin."""
from dataclasses import dataclass
from cml_bench.strategy import StrategyContext, register_strategy


@dataclass(frozen=True)
class Options:
    note: str = "hello"


@register_strategy("{name}", options=Options, description="test plugin")
def build(options: Options, ctx: StrategyContext) -> list:
    assert ctx.meta.num_classes == 70
    return []
'''


def _fresh(registry: Registry) -> None:
    registry._discovered = False  # re-scan, as a new process would


def test_readme_one_file_strategy_is_discovered_and_runs(tmp_path, monkeypatch, tiny_layer):
    """The README's "Add a strategy in one file" example, in a folder named by --plugins."""
    import re
    from pathlib import Path

    from cml_bench import registry
    from cml_bench.runner import resolve_config, run

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# my_plugins/replay_fifo.py\n.*?)```", readme, re.S).group(1)
    (tmp_path / "my_plugins").mkdir()
    (tmp_path / "my_plugins" / "replay_fifo.py").write_text(code)
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    try:
        registry.add_plugin_folders([str(tmp_path / "my_plugins")])
        assert "fifo" in STRATEGIES.names()
        config = resolve_config(tiny_layer, {"strategy": {"name": "fifo+ssca"}})
        result = run(config, tmp_path / "out", log=lambda *_: None)
        assert result.rows[0]["strategy"] == "fifo+ssca"
        assert {r["trained_through_task"] for r in result.rows} == {0, 1, 2, 3}
    finally:
        STRATEGIES._entries.pop("fifo", None)
        sys.modules.pop("cml_bench_plugin_replay_fifo", None)
        registry._PLUGIN_FILES.pop((tmp_path / "my_plugins" / "replay_fifo.py").resolve(), None)


def test_third_party_strategy_through_entry_point(tmp_path, monkeypatch):
    (tmp_path / "thirdparty_cl.py").write_text(PLUGIN.format(name="entry-strat"))
    dist = tmp_path / "thirdparty_cl-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-cl\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cml_bench.strategies]\nentry-strat = thirdparty_cl\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fresh(STRATEGIES)
    try:
        assert "entry-strat" in STRATEGIES.names()
        assert STRATEGIES.get("entry-strat").description == "test plugin"
    finally:
        STRATEGIES._entries.pop("entry-strat", None)
        sys.modules.pop("thirdparty_cl", None)


HEAD_PLUGIN = '''
"""A head in one file: global max pooling and a linear classifier, logits divided by model.gamma."""
import torch
from torch import nn

from cml_bench.models import Head, register_head


@register_head("maxpool")
class MaxPooledHead(Head):
    """Global max pooling and a linear classifier, its logits divided by model.gamma."""

    def __init__(self, channels: int, num_labels: int, temperature: float):
        super().__init__()
        self.max_classifier = nn.Linear(channels, num_labels)
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg, channels: int, num_labels: int) -> "MaxPooledHead":
        return cls(channels, num_labels, temperature=cfg.gamma)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return (self.max_classifier(fmap.amax((2, 3))) / self.temperature).unsqueeze(0)
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder for --plugins; what its files register is forgotten afterwards, as in a new process."""
    from cml_bench import registry

    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    before = [set(r._entries) for r in registry.PLUGIN_REGISTRIES]
    yield folder
    for r, names in zip(registry.PLUGIN_REGISTRIES, before):
        for name in set(r._entries) - names:
            del r._entries[name]
    for path in folder.glob("*.py"):
        sys.modules.pop(f"cml_bench_plugin_{path.stem}", None)
        registry._PLUGIN_FILES.pop(path.resolve(), None)


def test_plugin_file_head_runs_with_any_strategy(plugin_dir, tmp_path, tiny_layer, capsys):
    """A head defined in a --plugins file is a strategy suffix at once; a typo of it is suggested."""
    import torch
    import yaml

    from cml_bench.cli import main
    from cml_bench.config import ModelConfig

    (plugin_dir / "max_head.py").write_text(HEAD_PLUGIN)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_layer))
    run = ["run", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out")]
    assert main(["--plugins", str(plugin_dir), *run, "--strategy", "finetune+maxpool"]) == 0
    (folder,) = (tmp_path / "out" / "synth-cocoseq" / "finetune+maxpool").glob("seed0-*")
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["head"] == "maxpool"
    state = torch.load(folder / "model.pt", weights_only=True)
    assert {k for k in state if k.startswith("head.")} == {"head.max_classifier.weight", "head.max_classifier.bias"}
    assert HEADS.get("maxpool").build.from_config(ModelConfig(gamma=4.0), 8, 3).temperature == 4.0
    capsys.readouterr()
    assert main([*run, "--strategy", "finetune+maxpol"]) == 2
    assert capsys.readouterr().err == ("error: Unknown head suffix '+maxpol' in 'finetune+maxpol'. Did you mean "
                                       "'+maxpool'? Available heads: +cos, +ssca, +maxpool (none = pooled).\n")
    assert main(["list"]) == 0
    assert "Heads: pooled, cos, ssca, maxpool (pooled is the default)" in capsys.readouterr().out


def test_a_head_must_be_a_head_class():
    from cml_bench.models import register_head

    with pytest.raises(TypeError, match=r"@register_head\('plain'\).*expected a subclass of cml_bench.models.Head"):
        register_head("plain")(lambda channels, num_labels: None)
    assert "plain" not in HEADS.names()


DATA_PLUGIN = '''
"""A benchmark with its own data commands, in one file: a folder whose labels.txt lists images."""
from dataclasses import dataclass
from pathlib import Path

from cml_bench.stream import DataCommands, SourceOption, register_benchmark


@dataclass
class Report:
    images: list

    def text(self) -> str:
        return f"{len(self.images)} labelled images"


def inspect(labels_dir: str) -> Report:
    path = Path(labels_dir) / "labels.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Label list '{path}' not found (expected --labels-dir DIR holding labels.txt).")
    return Report(path.read_text().splitlines())


def prepare(labels_dir: str, out: str, *, size: int, skip_bad_images: bool, force: bool, progress) -> Report:
    report = inspect(labels_dir)
    Path(out).mkdir()
    (Path(out) / "size.txt").write_text(str(size))
    return report


@dataclass(frozen=True)
class Options:
    root: str | None = None


@register_benchmark("toy-labels", options=Options, description="a store-backed test plugin",
                    data=DataCommands("Toy labels, one task", inspect, prepare,
                                      (SourceOption("--labels-dir", "folder holding labels.txt"),), size=24))
def build(options: Options):
    raise ValueError("toy-labels only shows the data commands of a plugin file")
'''


def test_plugin_file_benchmark_brings_its_data_commands(plugin_dir, tmp_path, capsys):
    """A benchmark in a --plugins file registers `data prepare|inspect NAME` with it: nothing else to edit."""
    from cml_bench.cli import main

    (plugin_dir / "toy_labels.py").write_text(DATA_PLUGIN)
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "labels.txt").write_text("a.jpg 1\nb.jpg 0\nc.jpg 1\n")
    plugins = ["--plugins", str(plugin_dir)]
    assert main([*plugins, "data", "inspect", "toy-labels", "--labels-dir", str(tmp_path / "toy")]) == 0
    assert capsys.readouterr().out == "3 labelled images\n"
    assert main([*plugins, "data", "prepare", "toy-labels", "--labels-dir", str(tmp_path / "toy"),
                 "--out", str(tmp_path / "store")]) == 0
    assert "3 labelled images" in capsys.readouterr().out
    assert (tmp_path / "store" / "size.txt").read_text() == "24"  # the size the plugin registered
    assert main([*plugins, "data", "inspect", "toy-labels", "--labels-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Label list") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main([*plugins, "data", "inspect", "toy-labels", "--help"])
    assert "--labels-dir DIR  folder holding labels.txt" in capsys.readouterr().out


def test_a_scan_without_plugin_folders_imports_only_its_kind():
    """`data prepare|inspect` lists the benchmarks: that must not import every strategy (Avalanche) too."""
    import os
    import subprocess

    code = ("import sys; from cml_bench.registry import BENCHMARKS; assert 'coco2014' in BENCHMARKS.names(); "
            "print(sorted(m for m in ('strategies.prs', 'avalanche') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "CML_BENCH_PLUGINS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
