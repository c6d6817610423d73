"""The architecture registry and plugin discovery."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid

import pytest
import torch.nn as nn

import workbench
from workbench.models.registry import ENTRY_POINT_GROUP, UnknownChoiceError

BUILTIN = {"fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated", "naive", "smp_unet", "deeplabv3plus"}


def test_list_is_sorted_and_complete():
    names = workbench.list_architectures()
    assert names == sorted(names)
    assert BUILTIN <= set(names)
    assert len(names) == len(set(names))


def test_list_fnmatch_filter():
    assert workbench.list_architectures("fcn*") == ["fcn16s", "fcn32s", "fcn8s"]
    assert workbench.list_architectures("*unet") == ["residual_unet", "smp_unet", "unet"]
    assert workbench.list_architectures("nothing_matches_*") == []


def test_info_fields():
    info = workbench.get_architecture("unet")
    assert info.name == "unet"
    assert info.title and info.paper and info.explanation
    assert info.accepts_upsample and info.default_upsample == "transposed_k2"
    assert info.default_encoder == "resnet10t"
    assert "decoder_channels" in info.options
    assert not {"num_classes", "in_chans", "encoder", "upsample"} & set(info.options)
    assert not workbench.get_architecture("naive").accepts_upsample
    assert workbench.get_architecture("naive").default_encoder is None
    assert workbench.get_architecture("tiramisu").extra["variants"] == ["fc_densenet103", "fc_densenet56", "fc_densenet67"]


def test_duplicate_name_raises():
    original = workbench.get_architecture("unet")

    with pytest.raises(ValueError, match="already registered"):

        @workbench.register_architecture("unet")
        def other_unet(*, num_classes, in_chans=3):
            return nn.Conv2d(in_chans, num_classes, 1)

    assert workbench.get_architecture("unet") is original


@pytest.mark.parametrize("bad", ["", None, 3])
def test_register_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="non-empty string"):
        workbench.register_architecture(bad)


def test_unknown_architecture_error():
    for exc_type in (ValueError, KeyError, UnknownChoiceError):
        with pytest.raises(exc_type):
            workbench.get_architecture("no_such_net")
    with pytest.raises(ValueError) as err:
        workbench.create_model("no_such_net", num_classes=2)
    msg = str(err.value)
    assert "no_such_net" in msg
    for name in BUILTIN:
        assert name in msg
    assert not msg.startswith('"')  # a readable message, not KeyError's repr


def test_unknown_option_lists_options():
    with pytest.raises(UnknownChoiceError) as err:
        workbench.create_model("unet", num_classes=2, encoder="test_resnet", decoder_chanels=(8, 8))
    msg = str(err.value)
    assert "decoder_chanels" in msg
    assert "decoder_channels" in msg and "encoder_weights" in msg and "num_classes" in msg
    with pytest.raises(KeyError):  # catchable both ways
        workbench.create_model("tiramisu", num_classes=2, depth=3)


@pytest.mark.parametrize("arch", ["naive", "smp_unet", "deeplabv3plus"])
def test_upsample_on_architecture_without_choice_raises(arch):
    assert not workbench.get_architecture(arch).accepts_upsample
    with pytest.raises(ValueError, match="takes no upsample"):
        workbench.create_model(arch, num_classes=2, upsample="bilinear")


def test_bad_common_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        workbench.create_model("naive", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        workbench.create_model("naive", num_classes=2.5)
    with pytest.raises(ValueError, match="in_chans"):
        workbench.create_model("naive", num_classes=2, in_chans=0)
    with pytest.raises(ValueError, match="no encoder"):
        workbench.create_model("naive", num_classes=2, encoder="test_resnet")
    with pytest.raises(ValueError, match="unknown upsample method 'trilinear'"):
        workbench.create_model("unet", num_classes=2, encoder="test_resnet", upsample="trilinear")


def test_create_model_records_resolved_kwargs():
    model = workbench.create_model("unet", num_classes=4, encoder="test_resnet", upsample={"method": "transposed", "kernel_size": 3})
    cfg = model.workbench_config
    assert cfg["architecture"] == "unet"
    kw = cfg["kwargs"]
    assert kw["num_classes"] == 4 and kw["in_chans"] == 3 and kw["encoder"] == "test_resnet"
    assert kw["upsample"] == "transposed_k3"
    assert kw["decoder_channels"] == [256, 128, 64, 32, 16]  # factory defaults recorded too
    assert kw["encoder_weights"] is None
    # defaults of the registration are filled in
    assert workbench.create_model("fcn8s", num_classes=2, encoder="test_resnet").workbench_config["kwargs"]["upsample"] == "transposed"
    assert "encoder" not in workbench.create_model("naive", num_classes=2).workbench_config["kwargs"]


def test_register_and_create_a_new_architecture(isolated_registry):
    name = f"wb_test_arch_{uuid.uuid4().hex[:8]}"

    @workbench.register_architecture(name, title="Test", paper="none", custom_field=7)
    def factory(*, num_classes, in_chans=3, width: int = 4):
        return nn.Sequential(nn.Conv2d(in_chans, width, 1), nn.Conv2d(width, num_classes, 1))

    assert name in workbench.list_architectures()
    info = workbench.get_architecture(name)
    assert info.extra == {"custom_field": 7}
    assert info.options == ["width"]
    assert info.source == __name__
    model = workbench.create_model(name, num_classes=2, width=5)
    assert model.workbench_config == {"architecture": name, "kwargs": {"num_classes": 2, "in_chans": 3, "width": 5}}

    @workbench.register_architecture(f"{name}_bad")
    def returns_nothing(*, num_classes, in_chans=3):
        return None

    with pytest.raises(TypeError, match="not an nn.Module"):
        workbench.create_model(f"{name}_bad", num_classes=2)


# --------------------------------------------------------------------------- plugin discovery


GOOD_PLUGIN = """
import torch.nn as nn
from workbench import register_architecture

@register_architecture("{name}", title="A plugin from WORKBENCH_PLUGIN_PATH")
def factory(*, num_classes, in_chans=3):
    return nn.Conv2d(in_chans, num_classes, 1)
"""

HALF_PLUGIN = """
import torch.nn as nn
from workbench import register_architecture

@register_architecture("{name}")
def factory(*, num_classes, in_chans=3):
    return nn.Conv2d(in_chans, num_classes, 1)

raise RuntimeError("half-way broken plugin")
"""


def _write(folder, filename, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / filename).write_text(textwrap.dedent(text))


def test_broken_plugin_is_recorded_and_others_still_load(isolated_registry, tmp_path, monkeypatch):
    folder = tmp_path / "extra_plugins"
    _write(folder, "aaa_broken.py", "raise RuntimeError('this plugin is broken on purpose')\n")
    _write(folder, "good_plugin.py", GOOD_PLUGIN.format(name="wb_test_good"))
    _write(folder, "half_plugin.py", HALF_PLUGIN.format(name="wb_test_half"))
    _write(folder, "dup_plugin.py", GOOD_PLUGIN.format(name="unet"))
    _write(folder, "syntax_error.py", "def (:\n")
    _write(folder, "_private.py", "raise RuntimeError('files starting with _ are not plugins')\n")
    monkeypatch.setenv("WORKBENCH_PLUGIN_PATH", os.pathsep.join([str(tmp_path / "does_not_exist"), str(folder)]))

    workbench.load_plugins(reload=True)

    names = set(workbench.list_architectures())
    assert "wb_test_good" in names
    assert BUILTIN <= names
    assert "wb_test_half" not in names  # rolled back: a failed module registers nothing
    errors = workbench.plugin_errors()
    by_file = {os.path.basename(k): v for k, v in errors.items()}
    assert set(by_file) == {"aaa_broken.py", "half_plugin.py", "dup_plugin.py", "syntax_error.py"}
    assert "broken on purpose" in by_file["aaa_broken.py"] and "RuntimeError" in by_file["aaa_broken.py"]
    assert "already registered" in by_file["dup_plugin.py"]
    assert "SyntaxError" in by_file["syntax_error.py"]
    # the builtin unet is the real one, not the duplicate
    assert workbench.get_architecture("unet").default_encoder == "resnet10t"
    model = workbench.create_model("wb_test_good", num_classes=2)
    assert isinstance(model, nn.Conv2d)
    # unknown names now hint at the failures
    with pytest.raises(UnknownChoiceError, match="plugin_errors"):
        workbench.get_architecture("wb_test_half")


def test_reload_without_extra_path_forgets_plugins(isolated_registry, tmp_path, monkeypatch):
    before = set(workbench.list_architectures())
    folder = tmp_path / "p"
    _write(folder, "good_plugin.py", GOOD_PLUGIN.format(name="wb_test_transient"))
    monkeypatch.setenv("WORKBENCH_PLUGIN_PATH", str(folder))
    workbench.load_plugins(reload=True)
    assert "wb_test_transient" in workbench.list_architectures()
    monkeypatch.delenv("WORKBENCH_PLUGIN_PATH")
    workbench.load_plugins()  # idempotent: no rescan
    assert "wb_test_transient" in workbench.list_architectures()
    workbench.load_plugins(reload=True)
    assert "wb_test_transient" not in workbench.list_architectures()
    assert set(workbench.list_architectures()) == before
    assert workbench.plugin_errors() == {}


def _fake_distribution(root, module_name, entry_name, module_text):
    dist = root / "fakepkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_name} = {module_name}\n")
    (dist / "RECORD").write_text("")
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_text))


def test_entry_point_plugin_is_discovered(isolated_registry, tmp_path, monkeypatch):
    module_name = f"fakepkg_wb_plugin_{uuid.uuid4().hex[:8]}"
    _fake_distribution(tmp_path, module_name, "fake", GOOD_PLUGIN.format(name="wb_test_entry_point"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "wb_test_entry_point" not in workbench.list_architectures()
        workbench.load_plugins(reload=True)
        assert "wb_test_entry_point" in workbench.list_architectures()
        assert BUILTIN <= set(workbench.list_architectures())
        assert workbench.get_architecture("wb_test_entry_point").source == module_name
        assert workbench.plugin_errors() == {}
        # a second rescan: the module is already imported, it must still register again
        workbench.load_plugins(reload=True)
        assert "wb_test_entry_point" in workbench.list_architectures()
        assert workbench.plugin_errors() == {}
    finally:
        sys.modules.pop(module_name, None)


def test_broken_entry_point_is_recorded(isolated_registry, tmp_path, monkeypatch):
    module_name = f"fakepkg_wb_broken_{uuid.uuid4().hex[:8]}"
    _fake_distribution(tmp_path, module_name, "broken", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        workbench.load_plugins(reload=True)
        errors = workbench.plugin_errors()
        assert len(errors) == 1
        (key, message), = errors.items()
        assert "entry point broken" in key and module_name in key
        assert "missing dependency xyz" in message
        assert BUILTIN <= set(workbench.list_architectures())
    finally:
        sys.modules.pop(module_name, None)


def test_isolated_registry_restored():
    # runs after the plugin tests in file order: nothing they registered is left behind
    names = workbench.list_architectures()
    assert BUILTIN <= set(names)
    assert not [n for n in names if n.startswith("wb_test_")]
    assert workbench.plugin_errors() == {}
    assert workbench.get_architecture("unet").default_encoder == "resnet10t"
