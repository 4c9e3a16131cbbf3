import pytest
import torch

from uxbseg.config import load_config
from uxbseg.errors import ConfigError
from uxbseg.models import UXBFusionModel
from uxbseg.models.voxel_branch import VoxelBranch

from .conftest import ROOT


@pytest.mark.parametrize("fusion", ["global", "column", "voxel_only", "image_only"])
@pytest.mark.parametrize("head", ["seed", "mlp"])
def test_forward_shapes(tiny_cfg, fusion, head):
    tiny_cfg.model.fusion = fusion
    tiny_cfg.model.image_head = head
    surface = fusion in ("column", "image_only")  # the surface branch needs column maps
    if not surface:
        tiny_cfg.model.surface_branch = 0
    model = UXBFusionModel.from_config(tiny_cfg)
    c = len(tiny_cfg.grid.features)
    out = model(torch.randn(1, 3, 64, 64), torch.randn(1, c, 32, 32, 64))
    assert out["logits3d"].shape == (1, 3, 32, 32, 64)
    if fusion == "voxel_only":
        assert out["logits2d"] is None
    else:
        assert out["logits2d"].shape == (1, 3, 32, 64)
    if surface:
        assert out["logits_surface"].shape == (1, 3, 32, 64)
    else:
        assert out["logits_surface"] is None


def test_surface_branch_reads_only_the_surface_columns(tiny_cfg):
    """The 2D branch sees the surface_* channels (one depth slice) and nothing else, and its
    features reach the 3D logits through the column fusion."""
    feats = list(tiny_cfg.grid.features)
    surface = [i for i, f in enumerate(feats) if f.startswith("surface_")]
    assert len(surface) == 4
    torch.manual_seed(0)
    model = UXBFusionModel.from_config(tiny_cfg).eval()
    image = torch.randn(1, 3, 64, 64)
    vox = torch.randn(1, len(feats), 32, 32, 64)
    vox[:, surface] = vox[:, surface, :1]  # constant along depth, as the voxeliser makes them
    with torch.no_grad():
        base = model(image, vox)
        other = vox.clone()
        other[:, feats.index("height")] += 1.0
        other[:, surface, 5:] = 0.0  # depth slices past the first are not read
        moved = model(image, other)
        torch.testing.assert_close(moved["logits_surface"], base["logits_surface"])
        assert not torch.allclose(moved["logits3d"], base["logits3d"])
        bumped = vox.clone()
        bumped[:, surface[0], :, 10:20, 10:20] += 0.5
        out = model(image, bumped)
    assert not torch.allclose(out["logits_surface"], base["logits_surface"])
    model.surface_branch.zero_grad()
    model.train()
    model(image, vox)["logits3d"].square().mean().backward()
    assert model.surface_branch.enc1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "section, name, value, msg",
    [
        ("model", "fusion", "global", "needs model.fusion column or image_only"),
        ("model", "surface_branch", 10, "multiple of 4"),
        ("grid", "features", ("occupancy", "height"), r"surface_\* channels in grid.features"),
        ("model", "surface_levels", 1, "at least 2 levels"),
        ("model", "surface_levels", 7, "divisible by 64"),
    ],
)
def test_surface_branch_checks_name_the_fix(tiny_cfg, section, name, value, msg):
    setattr(getattr(tiny_cfg, section), name, value)
    with pytest.raises(ConfigError, match=msg):
        UXBFusionModel.from_config(tiny_cfg)


def test_surface_levels_deepen_the_branch_and_keep_the_three_level_names():
    from uxbseg.models.surface_branch import SurfaceBranch

    torch.manual_seed(0)
    three = SurfaceBranch(4, width=8)
    four = SurfaceBranch(4, width=8, levels=4)
    assert set(three.state_dict()) < set(four.state_dict())  # old weights keep their names
    new = {k.split(".")[0] for k in set(four.state_dict()) - set(three.state_dict())}
    assert new == {"enc4", "dec3"}
    assert four.enc4[0].weight.shape == (64, 32, 3, 3)
    assert four.dec3[0].weight.shape == (32, 96, 3, 3)
    maps = torch.randn(2, 4, 16, 32)
    for net in (three, four):
        feat, logits = net(maps)
        assert feat.shape == (2, 8, 16, 32) and logits.shape == (2, 3, 16, 32)


@pytest.mark.slow
def test_seed_config_builds_the_full_model():
    cfg = load_config(ROOT / "configs" / "seed.yaml", ["model.pretrained_2d=null"])
    model = UXBFusionModel.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 252.4e6 < n < 252.6e6
    assert sum(p.numel() for p in model.voxel_branch.parameters()) == pytest.approx(
        248.1e6, rel=1e-3
    )
    assert model.image_branch.out_channels == 256


@pytest.mark.parametrize(
    ("shape", "msg"), [((32, 48, 64), "multiple of 32"), ((32, 32, 32), "single voxel")]
)
def test_grid_checks_name_the_value(shape, msg):
    with pytest.raises(ConfigError, match=msg):
        VoxelBranch(3, 8, 12, shape)


def test_feature_size_check():
    with pytest.raises(ConfigError, match="feature_size=20"):
        VoxelBranch(3, 8, 20, (32, 32, 64))


def test_pretrained_from_local_folder(tmp_path, tiny_cfg):
    from transformers import SegformerConfig, SegformerModel

    cfg = SegformerConfig(
        hidden_sizes=[8, 8, 16, 16],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=16,
    )
    torch.manual_seed(0)
    saved = SegformerModel(cfg)
    saved.save_pretrained(tmp_path / "tiny-segformer")
    tiny_cfg.model.pretrained_2d = str(tmp_path / "tiny-segformer")
    model = UXBFusionModel.from_config(tiny_cfg)
    enc = model.image_branch.encoder
    for (k, a), (_, b) in zip(enc.state_dict().items(), saved.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    c = len(tiny_cfg.grid.features)
    out = model(torch.randn(1, 3, 64, 64), torch.randn(1, c, 32, 32, 64))
    assert out["logits3d"].shape == (1, 3, 32, 32, 64)


def test_unreachable_pretrained_is_a_clear_error(tiny_cfg, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    tiny_cfg.model.pretrained_2d = "nvidia/segformer-b0-finetuned-ade-512-512"
    with pytest.raises(ConfigError, match=r"model\.pretrained_2d=null"):
        UXBFusionModel.from_config(tiny_cfg)


@pytest.mark.parametrize("fusion", ["global", "column"])
def test_fast_path_equals_seed_formulation_on_same_weights(tiny_cfg, fusion):
    tiny_cfg.model.fusion = fusion
    tiny_cfg.model.surface_branch = 24 if fusion == "column" else 0
    torch.manual_seed(0)
    fast = UXBFusionModel.from_config(tiny_cfg).eval()
    tiny_cfg.model.fusion_impl = "naive"
    naive = UXBFusionModel.from_config(tiny_cfg).eval()
    naive.load_state_dict(fast.state_dict())
    x = (torch.randn(1, 3, 64, 64), torch.randn(1, len(tiny_cfg.grid.features), 32, 32, 64))
    with torch.no_grad():
        a, b = fast(*x), naive(*x)
    torch.testing.assert_close(a["logits3d"], b["logits3d"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["logits2d"], b["logits2d"], rtol=0, atol=0)


@pytest.mark.parametrize("fusion", ["column", "global", "voxel_only"])
def test_folded_output_conv_same_outputs_and_gradients(tiny_cfg, fusion):
    """SwinUNETR's 1x1x1 output conv folded into the fusion's conv1 (tiny config) gives the
    unfolded model's logits and every parameter's gradient, the folded conv's own included."""
    tiny_cfg.model.fusion = fusion
    tiny_cfg.model.surface_branch = 24 if fusion == "column" else 0
    torch.manual_seed(0)
    fast = UXBFusionModel.from_config(tiny_cfg)
    assert fast.voxel_branch.output_projection() is not None  # folded: 12*16*27 < 16*12+16*16*27
    tiny_cfg.model.fusion_impl = "naive"
    plain = UXBFusionModel.from_config(tiny_cfg)
    assert plain.voxel_branch.output_projection() is None
    plain.load_state_dict(fast.state_dict())
    c = len(tiny_cfg.grid.features)
    x = (torch.randn(2, 3, 64, 64), torch.randn(2, c, 32, 32, 64))
    for model in (fast, plain):
        torch.manual_seed(1)
        out = model(*x)
        loss = out["logits3d"].square().mean()
        (loss + out["logits2d"].mean() if out["logits2d"] is not None else loss).backward()
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-6, msg=name)
    assert fast.voxel_branch.net.out.conv.conv.weight.grad.abs().sum() > 0


def test_output_conv_not_folded_where_it_costs_more(tiny_cfg):
    tiny_cfg.model.feature_size, tiny_cfg.model.voxel_out_channels = 24, 8  # 24*16*27 > 8*24+...
    model = UXBFusionModel.from_config(tiny_cfg)
    assert model.voxel_branch.output_projection() is None


@pytest.mark.parametrize(("batch", "threads"), [(1, None), (2, None), (1, 1)])
def test_channels_last_equals_default_layout_on_same_weights(tiny_cfg, batch, threads):
    """channels_last_3d (oneDNN for every conv on CPU), and NHWC in the 2D branches, change
    speed, not results or gradients. Single-threaded, torch runs the 1x1x1 residual convs in
    its unfolded kernel, which returns the default layout into the channels_last network."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        _channels_last_equals_default_layout(tiny_cfg, batch)
    finally:
        torch.set_num_threads(before)


def _channels_last_equals_default_layout(tiny_cfg, batch: int) -> None:
    tiny_cfg.model.channels_last = False  # tiny.yaml turns it on
    torch.manual_seed(0)
    plain = UXBFusionModel.from_config(tiny_cfg)
    plain_conv = plain.voxel_branch.net.encoder1.layer.conv1.conv.weight
    assert plain_conv.is_contiguous()
    tiny_cfg.model.channels_last = True
    fast = UXBFusionModel.from_config(tiny_cfg)
    fast.load_state_dict(plain.state_dict())
    conv = fast.voxel_branch.net.encoder1.layer.conv1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    names_2d = ("surface_branch.enc1.0.weight", "surface_branch.dec1.3.weight")
    patch = "image_branch.encoder.stages.0.patch_embeddings.proj.weight"
    for name in (*names_2d, patch):
        w = dict(fast.named_parameters())[name]
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous(), name
    c = len(tiny_cfg.grid.features)
    x = (torch.randn(batch, 3, 64, 64), torch.randn(batch, c, 32, 32, 64))
    outs = []
    for model in (plain, fast):
        for m in model.modules():  # a dropout mask is drawn in memory order, so each layout
            if isinstance(m, torch.nn.Dropout):  # would draw another (equally likely) one
                m.p = 0.0
        torch.manual_seed(1)  # same drop-path draws (one per sample) in training mode
        out = model(*x)
        loss = out["logits3d"].square().mean() + out["logits2d"].mean()
        (loss + out["logits_surface"].square().mean()).backward()
        outs.append((out, dict(model.named_parameters())))
    (a, pa), (b, pb) = outs
    for key in ("logits3d", "logits2d", "logits_surface"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    for name in (
        "voxel_branch.net.encoder1.layer.conv1.conv.weight",
        "fusion.conv1.weight",
        *names_2d,
        patch,
    ):
        torch.testing.assert_close(pa[name].grad, pb[name].grad, rtol=1e-3, atol=1e-6, msg=name)


def test_compile_branches_compiles_each_branch_in_place_and_says_what_it_costs(
    tiny_cfg, caplog, monkeypatch, tmp_path
):
    """Only the wiring (compiling itself takes minutes: BENCHMARKS); keys stay the same; the
    Inductor cache goes to the user's cache folder (torch's default is under /tmp)."""
    import os

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = UXBFusionModel.from_config(tiny_cfg)
    keys = list(model.state_dict())
    branches = [model.image_branch, model.voxel_branch, model.surface_branch, model.fusion]
    assert all(b._compiled_call_impl is None for b in branches if b is not None)
    with caplog.at_level("INFO", logger="uxbseg.models.model"):
        model.compile_branches()
    assert all(b._compiled_call_impl is not None for b in branches if b is not None)
    assert list(model.state_dict()) == keys
    assert "model.compile=false" in caplog.text and "cache" in caplog.text
    cache = str(tmp_path / "uxbseg" / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == cache and cache in caplog.text
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's own
    UXBFusionModel.from_config(tiny_cfg).compile_branches()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compile_whole_compiles_the_models_forward_as_one_function(tiny_cfg):
    """For CUDA graphs without gradients (one generation a call): the model itself compiled,
    its branches left as they are (Dynamo inlines them), the keys unchanged."""
    model = UXBFusionModel.from_config(tiny_cfg)
    keys = list(model.state_dict())
    model.compile_branches("reduce-overhead", whole=True)
    assert model._compiled_call_impl is not None
    branches = [model.image_branch, model.voxel_branch, model.surface_branch, model.fusion]
    assert all(b._compiled_call_impl is None for b in branches if b is not None)
    assert list(model.state_dict()) == keys


def test_the_compile_cache_is_ours_though_an_import_wrote_torchs_default(
    tiny_cfg, monkeypatch, tmp_path
):
    """Importing Lightning asks Inductor for its cache folder, which writes torch's default
    (under the temporary folder) into the environment: that is not the user's choice, and the
    persistent cache still replaces it."""
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # torch's default goes here
    written = cache_dir()  # what importing lightning.pytorch does
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == written != str(tmp_path / "uxbseg" / "inductor")
    UXBFusionModel.from_config(tiny_cfg).compile_branches()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "uxbseg" / "inductor")


def test_a_channels_last_model_compiles_every_graph_channels_last(tiny_cfg, monkeypatch):
    """Inductor's layout heuristic is overridden for a channels-last model (an H200 spent 19 %
    of the compiled forward on cuDNN's layout transposes without it), left alone otherwise."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "force_layout_optimization", False)
    tiny_cfg.model.channels_last = False
    UXBFusionModel.from_config(tiny_cfg).compile_branches()
    assert inductor.force_layout_optimization is False
    tiny_cfg.model.channels_last = True
    model = UXBFusionModel.from_config(tiny_cfg)
    model.compile_branches(mode="reduce-overhead")
    assert inductor.force_layout_optimization is True
    assert model.voxel_branch._compiled_call_impl is not None


@pytest.mark.parametrize("bias_grad", ["kernel", "recompute"])
def test_fast_voxel_branch_traces_without_a_graph_break_of_ours(tiny_cfg, bias_grad):
    """What ``torch.compile`` sees of the GPU's fast path (channels_last norms as ``var_mean``,
    SDPA window attention, unfolded first convs), traced by Dynamo alone: the only graph break is
    MONAI's own input-size check, so Inductor gets the network in one graph after it. Also with
    the attention's bias gradient recomputed (an autograd.Function, its backward traced too)."""
    tiny_cfg.model.use_flash_attention = True
    tiny_cfg.model.sdpa_bias_grad = bias_grad
    model = UXBFusionModel.from_config(tiny_cfg)
    unfolded = [m for m in model.modules() if type(m).__name__ == "UnfoldedConv3d"]
    for m in unfolded:
        m.devices = ("cpu",)  # the GPU's code path
    assert unfolded
    x = torch.rand(1, len(tiny_cfg.grid.features), 32, 32, 64)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    explained = torch._dynamo.explain(model.voxel_branch)(x)
    places = {b.user_stack[-1].name for b in explained.break_reasons}
    assert places == {"_check_input_size"}, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 2
